"""Quantization-aware training and quantized export (issue 12).

- :mod:`asrq.quant.config`: :class:`QuantConfig`, :class:`QatConfig`.
- :mod:`asrq.quant.fake_quant`: LSQ fake quantizers and the ``ste`` / ``noise`` estimators.
- :mod:`asrq.quant.modules`: :func:`quantize_`, calibration, :func:`strip_fake_quant`.
- :mod:`asrq.quant.squat`: SQuAT's alternating SAM / step-size training step.
- :mod:`asrq.quant.export`: ExecuTorch / ONNX exports that carry the learned scales, PTQ baselines.
- :mod:`asrq.quant.pt2e`: the PT2E quantizer that puts the learned scales on an exported graph.
- :mod:`asrq.quant.programs`: the four RNN-T programs int8 for ONNX + ExecuTorch.
- :mod:`asrq.quant.train`: ``asrq qat train`` (QAT fine-tuning of an fp32 checkpoint).

What ``asrq export --quant int8`` should call::

    from asrq.quant.train import load_qat_model
    from asrq.quant.programs import export_quantized_programs

    loaded = load_qat_model("exp/mini_qat/model.pt")        # fake-quant model, learned scales
    summary = export_quantized_programs(
        loaded.model, loaded.config.qat.quant, out_dir, chunk_frames, left_frames,
        targets=("onnx", "executorch"), meta=<the fp32 export's metadata>,
        constant_methods=<the fp32 .pte constant methods>,
    )   # writes <out>/<target>/<program>.int8.{onnx,pte}; returns sizes, delegate / fused ops

PTQ baselines from an fp32 checkpoint: :func:`asrq.quant.export.ptq_onnx_dynamic`,
:func:`~asrq.quant.export.ptq_onnx_int4` (from the fp32 ``.onnx``),
:func:`~asrq.quant.export.ptq_pt2e_static` then :func:`~asrq.quant.export.lower_to_pte` /
:func:`~asrq.quant.export.onnx_from_graph`, and
:func:`~asrq.quant.export.export_executorch_8da4w` (``learned=False``; ``learned=True`` takes a
QAT int4 model's group scales).
"""

from asrq.quant.config import ModuleOverride, QatConfig, QuantConfig
from asrq.quant.fake_quant import noise_amplitude, set_qat_step
from asrq.quant.modules import (
    calibrate,
    quantize_,
    quantized_layers,
    split_parameters,
    strip_fake_quant,
)

__all__ = [
    "ModuleOverride",
    "QatConfig",
    "QuantConfig",
    "calibrate",
    "noise_amplitude",
    "quantize_",
    "quantized_layers",
    "set_qat_step",
    "split_parameters",
    "strip_fake_quant",
]
