"""Helpers several test files share (not a test module)."""

from __future__ import annotations

from pathlib import Path

import pytest


def shared_tiny_export(factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint exported (ONNX + ExecuTorch) once per session; every test file
    that needs an export reuses this folder (the export is atomic, so a present metadata.json
    means a complete export)."""
    from asrq.export.pipeline import export_model
    from asrq.testing.models import make_tiny_checkpoint

    base = factory.getbasetemp() / "asrq_tiny_export"
    out = base / "model"
    if not (out / "metadata.json").is_file():
        export_model(make_tiny_checkpoint(base / "tiny.pt"), out)
    return out
