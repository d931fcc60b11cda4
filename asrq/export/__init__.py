"""Export a checkpoint of any head to ONNX and ExecuTorch (XNNPACK) programs with parity checks.

Entry point: :func:`asrq.export.pipeline.export_model` / :func:`~asrq.export.pipeline.export_loaded`
(``asrq export``), the one driver. Per head (:data:`asrq.export.heads.EXPORT_HEADS`):
:mod:`asrq.export.rnnt`, :mod:`asrq.export.ctc_attention`; shared pieces: program specs and the
encoders' shape contract (:mod:`asrq.export.spec`), parity (:mod:`asrq.export.parity`),
export-time rewrites (:mod:`asrq.export.rewrites`); per backend
(:data:`asrq.export.backends.EXPORTERS`): :mod:`asrq.export.onnx_export`,
:mod:`asrq.export.executorch_export`. Runtimes are in :mod:`asrq.runtime`.
"""
