"""Post-training calibration on real utterances: the activation ranges of a fake-quantized model
from greedy decoding of dev cuts (``asrq export --quant int8`` from an fp32 checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from asrq.quant.modules import calibrating
from asrq.utils.io import AsrqError


def calibrate_on_cuts(model: nn.Module, sp: Any, cuts: str | Path, max_utts: int = 32) -> int:
    """Observe the activation ranges of fake-quantized ``model`` while it greedy-decodes up to
    ``max_utts`` cuts of manifest ``cuts`` (full context), then set every activation
    quantizer's scale and zero point from them. Greedy decoding runs the encoder, the predictor
    and the joiner on the inputs they get at deployment (the joiner on projected frames), so
    every quantized layer is calibrated at its deploy-time input. Returns the utterances used."""
    from asrq.decode.evaluate import evaluate_model

    cuts = Path(cuts)
    if not cuts.is_file():
        raise AsrqError(f"{cuts}: calibration cuts not found (pass --calib-cuts)")
    with calibrating(model):
        res = evaluate_model(model, sp, cuts, "greedy", max_utts=max_utts, progress=False)
    return int(res.num_utts)
