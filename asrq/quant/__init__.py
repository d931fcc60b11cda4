"""Quantization-aware training and quantized export (issue 12).

- :mod:`asrq.quant.config`: :class:`QuantConfig`, :class:`QatConfig`.
- :mod:`asrq.quant.fake_quant`: LSQ fake quantizers and the ``ste`` / ``noise`` estimators.
- :mod:`asrq.quant.modules`: :func:`quantize_`, calibration, :func:`strip_fake_quant`.
- :mod:`asrq.quant.squat`: SQuAT's alternating SAM / step-size training step.
- :mod:`asrq.quant.export`: ExecuTorch / ONNX exports that carry the learned scales, PTQ baselines.
- :mod:`asrq.quant.train`: ``asrq qat train`` (QAT fine-tuning of an fp32 checkpoint).
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
