"""Export an RNN-T checkpoint to ONNX and ExecuTorch (XNNPACK) programs with parity checks.

Entry point: :func:`asrq.export.pipeline.export_model` (``asrq export``). The programs and their
shape contracts are in :mod:`asrq.export.wrappers`; runtimes in :mod:`asrq.runtime`.
"""
