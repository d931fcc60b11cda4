"""The runtime of each head, one table keyed by the export's ``head``: :data:`RUNTIME_HEADS`.

An entry (:class:`RuntimeHead`) knows its programs, its ``asrq transcribe`` methods, its
components class (an :class:`~asrq.runtime.exported.ExportedPrograms` subclass) and how to
build a transcriber. A new head is a new entry here (and in the export and bench tables).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from torch import Tensor

from asrq.runtime.ctc_attention import CtcAttentionRuntime
from asrq.runtime.exported import ExportedPrograms
from asrq.runtime.model_dir import ModelDir, read_model_dir
from asrq.runtime.rnnt import RnntRuntime
from asrq.utils.io import AsrqError


class RuntimeHead(Protocol):
    """What the runtime layer needs of a head."""

    #: program names of this head's exports
    programs: tuple[str, ...]
    #: ``asrq transcribe --method`` values
    methods: tuple[str, ...]
    #: the exported-programs class (``.open(model_dir, backend, threads, preload)``)
    components: type[ExportedPrograms]

    def check_method(self, method: str) -> str:
        """The search ``method`` names on this head; a clear error if it has none."""
        ...

    def transcriber(
        self, md: ModelDir, backend: str, streaming: bool, method: str, threads: int, beam: int
    ) -> Callable[[Tensor], list[int]]:
        """Load what transcription needs -> a function fbank ``(T, F)`` -> token ids."""
        ...


RUNTIME_HEADS: dict[str, RuntimeHead] = {
    "rnnt": RnntRuntime(),
    "ctc_attention": CtcAttentionRuntime(),
}
#: The head of exports whose metadata names none (written before heads were named).
LEGACY_HEAD = "rnnt"


def runtime_head(md: ModelDir) -> RuntimeHead:
    """The :data:`RUNTIME_HEADS` entry of an export; a clear error for a head unknown here."""
    head = md.head or LEGACY_HEAD
    if head not in RUNTIME_HEADS:
        raise AsrqError(
            f"{md.path}: head {head!r} is unknown to this asrq (it knows {list(RUNTIME_HEADS)})"
        )
    return RUNTIME_HEADS[head]


def load_exported(
    model_dir: str | Path | ModelDir, backend: str, threads: int = 1, preload: Sequence[str] = ()
) -> ExportedPrograms:
    """The exported programs of ``model_dir`` on ``backend``, as its head's components class."""
    md = read_model_dir(model_dir)
    return runtime_head(md).components.open(md, backend, threads, preload)


def transcribe_methods() -> list[str]:
    """Every head's ``asrq transcribe`` methods, each once, in table order."""
    return list(dict.fromkeys(m for h in RUNTIME_HEADS.values() for m in h.methods))
