"""Exported RNN-T programs behind the :class:`~asrq.decode.interface.RnntComponents` interface.

An RNN-T model directory holds, per backend, four programs (see :mod:`asrq.export.rnnt`):
``encoder``, ``encoder_streaming``, ``predictor``, ``joiner``. :class:`ExportedRnnt` adds the
predictor and joiner to the shared encoders of
:class:`~asrq.runtime.exported.ExportedPrograms`; :class:`RnntRuntime` is this head's entry in
:data:`asrq.runtime.heads.RUNTIME_HEADS` (transcription with greedy / modified beam search,
full context or streaming).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from asrq.decode.search import greedy_search, modified_beam_search
from asrq.decode.streaming import stream_decode
from asrq.runtime.exported import ExportedPrograms
from asrq.runtime.model_dir import ModelDir
from asrq.utils.io import AsrqError

#: Program names, in the order the export writes them.
PROGRAMS: tuple[str, ...] = ("encoder", "encoder_streaming", "predictor", "joiner")
#: ``asrq transcribe`` methods for this head.
METHODS: tuple[str, ...] = ("greedy", "modified_beam_search")


class ExportedRnnt(ExportedPrograms):
    """:class:`~asrq.decode.interface.RnntComponents` over the exported programs."""

    model_keys: ClassVar[tuple[str, ...]] = (
        "vocab_size",
        "blank_id",
        "chunk_frames",
        "context_size",
    )

    def __init__(self, programs: Any, meta: dict[str, Any], preload: Sequence[str] = ()) -> None:
        super().__init__(programs, meta, preload)
        self.context_size = int(meta["model"]["context_size"])

    def encode(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Full context: x (N, T, F), x_lens (N,) -> (N, T', J), (N,)."""
        enc, lens = self.encode_outputs(x, x_lens)
        return enc, lens

    def encode_chunk(
        self, x: Tensor, x_lens: Tensor, states: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """x (N, 4C + 3, F), x_lens (N,) -> (N, C, J), valid frames (N,), new states."""
        (enc, lens), new = self.encode_chunk_outputs(x, x_lens, states)
        return enc, lens, new

    def predict(self, context: Tensor) -> Tensor:
        """(N, context_size) int64 (-1 = padding) -> (N, J)."""
        return self.run_batched("predictor", [context.to(torch.int64)])

    def join(self, enc: Tensor, pred: Tensor) -> Tensor:
        """(N, J), (N, J) -> logits (N, V)."""
        return self.run_batched("joiner", [enc.float(), pred.float()])


class RnntRuntime:
    """The RNN-T entry of :data:`asrq.runtime.heads.RUNTIME_HEADS`."""

    programs = PROGRAMS
    methods = METHODS
    components = ExportedRnnt

    @staticmethod
    def check_method(method: str) -> str:
        if method not in METHODS:
            raise AsrqError(f"unknown method {method!r}; choose one of {list(METHODS)}")
        return method

    def transcriber(
        self, md: ModelDir, backend: str, streaming: bool, method: str, threads: int, beam: int
    ) -> Callable[[Tensor], list[int]]:
        """Load the programs one ``asrq transcribe`` needs -> fbank ``(T, F)`` -> token ids: the
        full-context encoder + search, or chunk by chunk through the streaming encoder
        (:func:`asrq.decode.streaming.stream_decode`)."""
        method = self.check_method(method)
        preload = ("encoder_streaming",) if streaming else ("encoder",)
        comp = ExportedRnnt.open(md, backend, threads, preload=(*preload, "predictor", "joiner"))

        def transcribe(feats: Tensor) -> list[int]:
            if streaming:
                return stream_decode(comp, feats, method=method, beam=beam)  # type: ignore[arg-type]
            enc, lens = comp.encode(feats[None], torch.tensor([feats.shape[0]]))
            if method == "greedy":
                return greedy_search(comp, enc, lens)[0]
            return modified_beam_search(comp, enc, lens, beam=beam)[0]

        return lambda feats: [int(t) for t in transcribe(feats)]
