"""Exported hybrid CTC / attention programs behind
:class:`~asrq.decode.ctc_attention.CtcAttentionComponents` (``asrq transcribe`` / ``asrq bench``).

A CTC / attention model directory (see :mod:`asrq.export.ctc_attention`) holds ``encoder``,
``encoder_streaming`` and ``decoder`` per backend. :class:`ExportedCtcAttention` adds the
decoder to the shared encoders of :class:`~asrq.runtime.exported.ExportedPrograms` (whose
outputs here carry the CTC log-probs); the search code is :mod:`asrq.decode.ctc_attention`.
:class:`CtcAttentionRuntime` is this head's entry in :data:`asrq.runtime.heads.RUNTIME_HEADS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from asrq.decode import ctc_attention as CA
from asrq.runtime.exported import ExportedPrograms
from asrq.runtime.model_dir import ModelDir
from asrq.utils.io import AsrqError

#: Program names, in the order the export writes them.
PROGRAMS: tuple[str, ...] = ("encoder", "encoder_streaming", "decoder")
#: ``asrq transcribe`` methods for this head; ``greedy`` is CTC greedy.
METHODS: tuple[str, ...] = ("greedy", *CA.METHODS)


class ExportedCtcAttention(ExportedPrograms):
    """:class:`~asrq.decode.ctc_attention.CtcAttentionComponents` over the exported programs."""

    model_keys: ClassVar[tuple[str, ...]] = ("vocab_size", "blank_id", "chunk_frames", "sos_id")
    encoder_outputs: ClassVar[int] = 3  # encoder_out, lengths, CTC log-probs

    def __init__(self, programs: Any, meta: dict[str, Any], preload: Sequence[str] = ()) -> None:
        super().__init__(programs, meta, preload)
        m = meta["model"]
        self.sos_id = int(m["sos_id"])
        self.eos_id = int(m["eos_id"])
        self.max_decoder_tokens: int | None = m.get("decoder_max_tokens", {}).get(self.backend)
        self.max_decoder_frames: int | None = m.get("decoder_max_frames", {}).get(self.backend)

    def encode(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Full context: x (N, T, F), x_lens (N,) -> (N, T', D), (N,), CTC log-probs (N, T', V)."""
        enc, lens, lp = self.encode_outputs(x, x_lens)
        return enc, lens, lp

    def encode_chunk(
        self, x: Tensor, x_lens: Tensor, states: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """x (N, 4C + 3, F), x_lens (N,) -> (N, C, D), valid frames (N,), CTC log-probs
        (N, C, V), new states."""
        (enc, lens, lp), new = self.encode_chunk_outputs(x, x_lens, states)
        return enc, lens, lp, new

    def decoder_log_probs(
        self, enc: Tensor, enc_lens: Tensor, hyps_in: Tensor, hyps_lens: Tensor
    ) -> Tensor:
        """enc (B, T', D), enc_lens (B,), hyps_in (B, U), hyps_lens (B,) -> (B, U, V); a batch
        above the program's planned maximum runs in pieces."""
        t, u = enc.shape[1], hyps_in.shape[1]
        if self.max_decoder_tokens is not None and u > self.max_decoder_tokens:
            raise AsrqError(
                f"hypothesis of {u - 1} tokens: the {self.backend} decoder takes at most "
                f"{self.max_decoder_tokens - 1}"
            )
        if self.max_decoder_frames is not None and t > self.max_decoder_frames:
            raise AsrqError(
                f"{t} encoder frames: the {self.backend} decoder takes at most "
                f"{self.max_decoder_frames} ({self.max_decoder_frames * 0.04:.0f} s); "
                "re-export with a larger --max-seconds"
            )
        inputs = [
            enc.float(),
            enc_lens.to(torch.int64),
            hyps_in.to(torch.int64),
            hyps_lens.to(torch.int64),
        ]
        return self.run_batched("decoder", inputs)


class CtcAttentionRuntime:
    """The CTC / attention entry of :data:`asrq.runtime.heads.RUNTIME_HEADS`."""

    programs = PROGRAMS
    methods = METHODS
    components = ExportedCtcAttention

    @staticmethod
    def check_method(method: str) -> str:
        """The search a transcribe ``method`` names on this head (``greedy`` -> ``ctc_greedy``)."""
        if method not in METHODS:
            raise AsrqError(
                f"method {method}: not for a ctc_attention model; choose one of {list(METHODS)}"
            )
        return "ctc_greedy" if method == "greedy" else method

    def transcriber(
        self, md: ModelDir, backend: str, streaming: bool, method: str, threads: int, beam: int
    ) -> Callable[[Tensor], list[int]]:
        """Load the programs one ``asrq transcribe`` needs -> fbank ``(T, F)`` -> token ids
        (``<sos>`` dropped). The rescoring weight is the exported config's ``decode.ctc_weight``."""
        search = self.check_method(method)
        ctc_weight = float(md.meta.get("config", {}).get("decode", {}).get("ctc_weight", 0.5))
        preload = ("encoder_streaming",) if streaming else ("encoder",)
        if search == "attention_rescoring":
            preload = (*preload, "decoder")
        comp = ExportedCtcAttention.open(md, backend, threads, preload=preload)

        def transcribe(feats: Tensor) -> list[int]:
            lens = torch.tensor([feats.shape[0]], dtype=torch.int64)
            tokens = CA.decode_batch(comp, feats[None], lens, search, streaming, beam, ctc_weight)[
                0
            ]  # type: ignore[arg-type]
            return [int(t) for t in tokens if int(t) != comp.sos_id]

        return transcribe
