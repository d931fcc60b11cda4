"""The streaming step ``asrq bench`` times, one per head: :data:`STREAMING_STEPS`.

A step (:class:`StreamingStep`) loads the exported programs one device runs per chunk and
returns ``(components, new_search, advance)``: ``components.encode_chunk(x, x_lens, states)``
gives ``(frames, valid, states)`` for ``advance(frames, valid, search)``, the online search of
that head. A new head is a new entry here (and in the export and runtime tables).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torch import Tensor

from asrq.decode.ctc_attention import CtcGreedyState
from asrq.decode.search import GreedyState, greedy_advance
from asrq.runtime.ctc_attention import ExportedCtcAttention
from asrq.runtime.heads import LEGACY_HEAD
from asrq.runtime.model_dir import ModelDir
from asrq.runtime.rnnt import ExportedRnnt
from asrq.utils.io import AsrqError

Step = tuple[Any, Callable[[], Any], Callable[[Tensor, Tensor, Any], None]]


class StreamingStep(Protocol):
    """What ``asrq bench`` runs per chunk on one head."""

    #: the search, as the report names it
    search: str
    #: the programs the step loads (their bytes are the report's ``streaming_file_bytes``)
    programs: tuple[str, ...]
    #: a module running this step on onnxruntime without torch (``python -m``), or None
    onnx_child: str | None

    def open(self, md: ModelDir, backend: str, threads: int) -> Step:
        """Load the programs -> (components, new-search factory, ``advance``)."""
        ...


class RnntGreedyStep:
    """RNN-T: the streaming encoder, then greedy search over the chunk's frames (predictor and
    joiner calls)."""

    search = "greedy"
    programs = ("encoder_streaming", "predictor", "joiner")
    onnx_child = "asrq.bench.lean"

    def open(self, md: ModelDir, backend: str, threads: int) -> Step:
        comp = ExportedRnnt.open(md, backend, threads, preload=self.programs)

        def advance(enc: Tensor, valid: Tensor, search: GreedyState) -> None:
            greedy_advance(comp, enc, valid, search)

        return comp, lambda: GreedyState.create(comp, 1), advance


class _StreamingCtc:
    """The view the benchmark drives: ``encode_chunk`` -> (CTC log-probs, valid, states)."""

    def __init__(self, comp: ExportedCtcAttention) -> None:
        self.comp = comp
        self.meta = comp.meta
        self.chunk_frames = comp.chunk_frames
        self.blank_id = comp.blank_id

    def init_states(self, batch_size: int) -> list[Tensor]:
        return self.comp.init_states(batch_size)

    def encode_chunk(
        self, x: Tensor, x_lens: Tensor, states: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        _, valid, lp, states = self.comp.encode_chunk(x, x_lens, states)
        return lp, valid, states


class CtcGreedyStep:
    """CTC / attention: the streaming encoder + CTC head, then online CTC greedy."""

    search = "ctc_greedy"
    programs = ("encoder_streaming",)
    onnx_child = None

    def open(self, md: ModelDir, backend: str, threads: int) -> Step:
        comp = _StreamingCtc(ExportedCtcAttention.open(md, backend, threads, preload=self.programs))

        def advance(lp: Tensor, valid: Tensor, search: CtcGreedyState) -> None:
            search.advance(lp, valid)

        return comp, lambda: CtcGreedyState(1, comp.blank_id), advance


STREAMING_STEPS: dict[str, StreamingStep] = {
    "rnnt": RnntGreedyStep(),
    "ctc_attention": CtcGreedyStep(),
}


def streaming_step(md: ModelDir) -> StreamingStep:
    """The :data:`STREAMING_STEPS` entry of an export (no ``head``: the legacy RNN-T)."""
    head = md.head or LEGACY_HEAD
    if head not in STREAMING_STEPS:
        raise AsrqError(f"{md.path}: no streaming benchmark for head {head!r}")
    return STREAMING_STEPS[head]
