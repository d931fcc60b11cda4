"""The RNN-T's four programs (asrq.export.wrappers) exported int8 with the learned scales, for
both runtimes: what ``asrq export --quant int8`` is meant to call.

:func:`export_quantized_programs` takes a fake-quantized model (``load_qat_model(path).model``)
and writes ``<out>/<target>/<program>.int8.{onnx,pte}`` per program, returning a summary
(sizes, XNNPACK delegate nodes, onnxruntime fused ops, the quantization metadata).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from asrq.export.wrappers import DEFAULT_MAX_ENCODER_STEPS, for_target, program_specs
from asrq.quant.config import QuantConfig
from asrq.quant.export import QuantArtifact, export_executorch_int8, export_onnx_int8
from asrq.quant.modules import float_layers, quantized_layers


def quant_metadata(model: nn.Module, cfg: QuantConfig) -> dict[str, Any]:
    """What an exported file records about its quantization: scheme, bits, granularity,
    estimator, and which layers stayed float."""
    return {
        "quant_scheme": "int8-learned",
        "quant_weights": f"{cfg.weight_dtype} symmetric per-channel, qmax "
        f"{cfg.weight_qmax or (127 if cfg.weight_dtype == 'int8' else 7)}",
        "quant_activations": "int8 affine per-tensor (learned step, calibrated zero point)"
        + (", outputs too" if cfg.outputs else ""),
        "quant_estimator": cfg.estimator,
        "quant_layers": len(quantized_layers(model)),
        "quant_float_layers": float_layers(model),
    }


def _summary(art: QuantArtifact) -> dict[str, Any]:
    d = asdict(art)
    d["path"] = str(art.path)
    d.pop("qparams", None)
    return d


def export_quantized_programs(
    model: nn.Module,
    cfg: QuantConfig,
    out_dir: str | Path,
    chunk_frames: int,
    left_frames: int,
    targets: tuple[str, ...] = ("onnx", "executorch"),
    programs: tuple[str, ...] = ("encoder", "encoder_streaming", "predictor", "joiner"),
    meta: dict[str, Any] | None = None,
    max_encoder_steps: int = DEFAULT_MAX_ENCODER_STEPS,
    constant_methods: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Export ``programs`` of fake-quantized RNN-T ``model`` (eval) to int8 for ``targets``
    with the learned scales. ``meta`` goes into every ONNX file's metadata (with the
    quantization's, :func:`quant_metadata`), ``constant_methods`` into every ``.pte`` (as the
    fp32 pipeline's). Returns ``{target: {program: artifact summary}}``."""
    model.eval()
    out = Path(out_dir)
    qmeta = {**(meta or {}), **quant_metadata(model, cfg)}
    result: dict[str, dict[str, Any]] = {}
    for target in targets:
        specs = program_specs(model, chunk_frames, left_frames, target, max_encoder_steps)
        (out / target).mkdir(parents=True, exist_ok=True)
        result[target] = {}
        for name in programs:
            spec = for_target(specs[name], target)
            if target == "onnx":
                art, _ = export_onnx_int8(
                    spec.module,
                    spec.example_inputs,
                    spec.dynamic_shapes,
                    spec.input_names,
                    spec.output_names,
                    out / target / f"{name}.int8.onnx",
                    {**qmeta, "program": name},
                )
            else:
                art, _ = export_executorch_int8(
                    spec.module,
                    spec.example_inputs,
                    spec.dynamic_shapes,
                    out / target / f"{name}.int8.pte",
                    constant_methods,
                )
            result[target][name] = _summary(art)
    return result
