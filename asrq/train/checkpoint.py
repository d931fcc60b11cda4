"""Checkpoints: one self-contained file holding the resolved config, the weights, the BPE model
bytes and (for training checkpoints) the optimizer, scheduler, RNG and data position.

Everything downstream (decode, export, slice, transcribe) starts from such a file and never
re-enters architecture flags (STYLE.md point 4).
"""

from __future__ import annotations

import io
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch

from asrq.config import ExperimentConfig, stored_experiment_config, to_dict
from asrq.utils.io import AsrqError, atomic_path

FORMAT = "asrq-checkpoint-v1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` (must hold ``config`` as a dict and ``model``)."""
    payload = {"format": FORMAT, **payload}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with clear errors for bad files.

    Loads with ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain data
    (dicts, lists, numbers, strings, bytes) only, and one that carries other pickled Python
    objects (which could run code on load) is refused."""
    path = Path(path)
    if not path.is_file():
        raise AsrqError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        raise AsrqError(
            f"{path}: refused: the file holds pickled Python objects, not only tensors and plain "
            f"data, and asrq loads checkpoints with weights_only=True so that a shared file "
            f"cannot run code ({lines[0] if lines else type(e).__name__})"
        ) from e
    except Exception as e:  # torch raises many types for corrupt files
        raise AsrqError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise AsrqError(f"{path}: not an asrq checkpoint (expected format {FORMAT!r})")
    return ckpt


def rng_state() -> dict[str, Any]:
    """The RNG states of torch, ``random`` and numpy as tensors and plain data (lists, ints,
    floats, strings), so checkpoints load with ``weights_only=True``."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss_next],
        "numpy": [str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def sentencepiece_from_bytes(data: bytes) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(data)
    return sp


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, ready for decoding or export."""

    model: torch.nn.Module
    config: ExperimentConfig
    sp: spm.SentencePieceProcessor
    bpe_model_bytes: bytes
    meta: dict[str, Any]
    subnet: str | None = None  # the subnet's label when cut out of a supernet (``asrq slice``)

    def decode_tokens(self, ids: list[int]) -> str:
        return self.sp.decode([int(i) for i in ids])


def load_model(path: str | Path) -> LoadedModel:
    """Rebuild the model (eval mode) a checkpoint describes; uses ``model_avg`` weights when
    present."""
    from asrq.models import build_model

    ckpt = load_checkpoint(path)
    cfg = stored_experiment_config(ckpt["config"], f"{path}:config")
    model = build_model(cfg.model)
    state = ckpt.get("model_avg") or ckpt["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise AsrqError(f"{path}: weights do not match the stored config ({e})") from e
    model.eval()
    bpe = ckpt.get("bpe_model")
    if not bpe:
        raise AsrqError(f"{path}: checkpoint holds no BPE model")
    meta = {k: v for k, v in ckpt.items() if k in ("step", "epoch", "train_seconds", "wer_curve")}
    return LoadedModel(
        model, cfg, sentencepiece_from_bytes(bpe), bpe, meta, subnet=ckpt.get("subnet")
    )


def model_payload(
    model: torch.nn.Module, cfg: ExperimentConfig, bpe_model_bytes: bytes, **extra: Any
) -> dict:
    """The payload of a deployable model file (no optimizer state)."""
    return {
        "config": to_dict(cfg),
        "model": model.state_dict(),
        "bpe_model": bpe_model_bytes,
        **extra,
    }


def state_dict_bytes(sd: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()
