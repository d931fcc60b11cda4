"""Quantization-aware training and quantized export (issue 12).

- :mod:`asrq.quant.config`: :class:`QuantConfig`, :class:`QatConfig`.
- :mod:`asrq.quant.fake_quant`: LSQ fake quantizers and the ``ste`` / ``noise`` estimators.
- :mod:`asrq.quant.modules`: :func:`quantize_`, calibration, :func:`strip_fake_quant`.
- :mod:`asrq.quant.squat`: SQuAT's alternating SAM / step-size training step.
- :mod:`asrq.quant.export`: ExecuTorch / ONNX exports that carry the learned scales, PTQ baselines.
- :mod:`asrq.quant.pt2e`: the PT2E quantizer that puts the learned scales on an exported graph.
- :mod:`asrq.quant.ptq`: calibration of a fake-quantized model on dev cuts (PTQ int8).
- :mod:`asrq.quant.train`: ``asrq qat train`` (QAT fine-tuning of an fp32 checkpoint, plain or
  supernet).

Quantized exports go through the one export driver: ``asrq export CKPT --quant
int8|int8-dynamic|w4a8`` (:func:`asrq.export.pipeline.export_model` with ``quant=...``; the
schemes are the table :data:`asrq.export.quant.QUANT_SCHEMES`)::

    from asrq.export.pipeline import export_model

    res = export_model("exp/mini_qat/model.pt", "exp/mini_qat/export-int8", quant="int8")
    res.metadata["quantization"], res.metadata["sizes"], res.parity.min_sqnr_db()

PTQ baselines from an fp32 checkpoint: :func:`asrq.quant.export.ptq_onnx_dynamic`,
:func:`~asrq.quant.int4.ptq_onnx_int4` (from the fp32 ``.onnx``),
:func:`~asrq.quant.export.ptq_pt2e_static` then :func:`~asrq.quant.export.lower_to_pte` /
:func:`~asrq.quant.export.onnx_from_graph`, and
:func:`~asrq.quant.int4.export_executorch_8da4w` (``learned=False``; ``learned=True`` takes a
QAT int4 model's group scales).
"""

from typing import Any

#: the names re-exported here, by module (imported on first use: ``asrq.config`` imports
#: :mod:`asrq.quant.config`, which must not pull in torch)
_EXPORTS = {
    "ModuleOverride": "asrq.quant.config",
    "QatConfig": "asrq.quant.config",
    "QuantConfig": "asrq.quant.config",
    "noise_amplitude": "asrq.quant.fake_quant",
    "set_qat_step": "asrq.quant.fake_quant",
    "calibrate": "asrq.quant.modules",
    "quantize_": "asrq.quant.modules",
    "quantized_layers": "asrq.quant.modules",
    "split_parameters": "asrq.quant.modules",
    "strip_fake_quant": "asrq.quant.modules",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'asrq.quant' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
