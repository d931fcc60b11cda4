"""The export of each head, one table keyed by the model's ``head``: :data:`EXPORT_HEADS`.

An entry (:class:`ExportHead`) gives its program names, the program specs for a backend, its
own ``metadata.json`` entries, which of them every file carries, and the inputs of its
parity checks; the
one export driver (:func:`asrq.export.pipeline.export_loaded`) does the rest. A new head is a
new entry here (and in the runtime and bench tables).
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import nn

from asrq.export.ctc_attention import CtcAttentionExport
from asrq.export.parity import Case
from asrq.export.rnnt import RnntExport
from asrq.export.spec import ProgramSpec, StreamingGeometry
from asrq.utils.io import AsrqError


class ExportHead(Protocol):
    """What the export driver needs of a head."""

    #: program names, in the order they are written
    programs: tuple[str, ...]
    #: integer ``metadata["model"]`` entries stored in each ``.pte`` as constant methods
    constant_keys: tuple[str, ...]
    #: ``metadata["model"]`` entries stored in each ONNX file's metadata_props
    file_keys: tuple[str, ...]

    def program_specs(
        self,
        model: nn.Module,
        chunk_frames: int,
        left_frames: int,
        target: str,
        max_encoder_steps: int,
    ) -> dict[str, ProgramSpec]: ...

    def model_metadata(
        self, model: nn.Module, g: StreamingGeometry, max_encoder_steps: int
    ) -> dict[str, Any]: ...

    def parity_cases(
        self, model: nn.Module, specs: dict[str, ProgramSpec], backend: str
    ) -> dict[str, list[Case]]:
        """Inputs of the parity checks of the head's own programs (the encoders' are shared)."""
        ...


EXPORT_HEADS: dict[str, ExportHead] = {
    "rnnt": RnntExport(),
    "ctc_attention": CtcAttentionExport(),
}


def export_head(model: nn.Module) -> tuple[str, ExportHead]:
    """(head name, :data:`EXPORT_HEADS` entry) of a model (its ``.head``)."""
    head = model.head
    if head not in EXPORT_HEADS:
        raise AsrqError(f"no export for head {head!r}; have {list(EXPORT_HEADS)}")
    return head, EXPORT_HEADS[head]
