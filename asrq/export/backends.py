"""How each backend writes one program, one table keyed by backend name (:data:`EXPORTERS`;
the runtime side of a backend is :data:`asrq.runtime.backends.BACKENDS`).

An exporter takes a :class:`~asrq.export.spec.ProgramSpec`, the target path, the metadata every
file carries (:class:`FileMetadata`) and the ONNX opset, writes the program, and returns its
``metadata.json`` entry (``bytes``, ``export_seconds``, backend details). A new backend is a new
entry here and in the runtime table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asrq.export.spec import ProgramSpec
from asrq.utils.io import AsrqError


@dataclass(frozen=True)
class FileMetadata:
    """What each exported file carries beside ``metadata.json``."""

    #: flat key -> value (ONNX ``metadata_props``; dicts as JSON)
    props: dict[str, Any]
    #: integer constants (ExecuTorch constant methods: ``program.vocab_size()``)
    constants: dict[str, int]


Exporter = Callable[[ProgramSpec, Path, FileMetadata, int], dict[str, Any]]


def export_onnx_program(
    spec: ProgramSpec, path: Path, meta: FileMetadata, opset: int
) -> dict[str, Any]:
    """ONNX (``torch.onnx.export(dynamo=True)``), metadata in the file's ``metadata_props``."""
    from asrq.export.onnx_export import export_onnx

    art = export_onnx(spec, path, meta.props, opset)
    return {"bytes": art.bytes, "export_seconds": round(art.seconds, 2), "opset": art.opset}


def export_executorch_program(
    spec: ProgramSpec, path: Path, meta: FileMetadata, opset: int
) -> dict[str, Any]:
    """ExecuTorch ``.pte`` (XNNPACK delegate, fp32), integer metadata as constant methods."""
    from asrq.export.executorch_export import export_executorch

    art = export_executorch(spec, path, meta.constants)
    entry: dict[str, Any] = {
        "bytes": art.bytes,
        "export_seconds": round(art.seconds["total"], 2),
        "stage_seconds": {k: round(v, 2) for k, v in art.seconds.items()},
        "delegate": "xnnpack",
        "dtype": "fp32",
        "xnnpack_partitions": art.delegates,
        "portable_ops": art.portable_ops,
    }
    if art.max_fbank_frames is not None:
        entry["max_fbank_frames"] = art.max_fbank_frames
    return entry


#: Every backend's program writer, by the names of :data:`asrq.runtime.backends.BACKENDS`.
EXPORTERS: dict[str, Exporter] = {
    "onnx": export_onnx_program,
    "executorch": export_executorch_program,
}


def get_exporter(backend: str) -> Exporter:
    try:
        return EXPORTERS[backend]
    except KeyError:
        raise AsrqError(f"no exporter for backend {backend!r}; have {list(EXPORTERS)}") from None
