"""How each model head is decoded: one entry per head (the key is the model's ``head``).

An entry gives the head's decoding methods (``asrq.config.HEAD_METHODS``), the components
over an eager model (what the searches run against) and the batch decoder. The exported
runtimes (:mod:`asrq.runtime`) offer the same components and reuse the batch decoders.
A new head is a new :class:`HeadDecoder` in :data:`DECODERS`.

Shapes: N batch, T fbank frames, F fbank bins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor, nn

from asrq.config import HEAD_METHODS
from asrq.decode import ctc_attention as CA
from asrq.decode.ctc import ctc_greedy
from asrq.decode.search import greedy_search, modified_beam_search
from asrq.decode.streaming import stream_ctc_greedy_batch, stream_decode_batch
from asrq.decode.torch_backend import TorchRnnt


@dataclass(frozen=True)
class SearchOptions:
    """Search settings shared by every head (each uses those its methods need)."""

    beam: int = 4
    max_sym_per_frame: int = 1
    ctc_weight: float = 0.5  # attention_rescoring: total = ctc_weight * ctc + attention


class BatchDecode(Protocol):
    """Decode a batch: feats (N, T, F), feat_lens (N,) -> token ids per utterance."""

    def __call__(
        self,
        comp: Any,
        feats: Tensor,
        feat_lens: Tensor,
        method: str,
        streaming: bool,
        opts: SearchOptions,
    ) -> list[list[int]]: ...


@dataclass(frozen=True)
class HeadDecoder:
    """One head's decoding: ``methods``, ``components(model, chunk_frames, left_frames)`` over
    the eager model, and ``decode_batch`` (:class:`BatchDecode`) over those components."""

    methods: tuple[str, ...]
    components: Callable[[nn.Module, int, int], Any]
    decode_batch: BatchDecode


def decode_rnnt_batch(
    comp: TorchRnnt,
    feats: Tensor,
    feat_lens: Tensor,
    method: str,
    streaming: bool,
    opts: SearchOptions,
) -> list[list[int]]:
    """RNN-T: ``greedy`` / ``modified_beam_search`` over the transducer, ``ctc_greedy`` over
    its auxiliary CTC head; full context or chunk by chunk (``streaming``)."""
    if streaming:
        if method == "ctc_greedy":
            return stream_ctc_greedy_batch(comp, feats, feat_lens)
        return stream_decode_batch(
            comp,
            feats,
            feat_lens,
            method,
            opts.beam,
            opts.max_sym_per_frame,  # type: ignore[arg-type]
        )
    if method == "ctc_greedy":
        lp, lens = comp.ctc_log_probs(feats, feat_lens)
        return ctc_greedy(lp, lens, comp.blank_id)
    enc, enc_lens = comp.encode(feats, feat_lens)
    if method == "greedy":
        return greedy_search(comp, enc, enc_lens, opts.max_sym_per_frame)
    return modified_beam_search(comp, enc, enc_lens, opts.beam)


def decode_ctc_attention_batch(
    comp: CA.CtcAttentionComponents,
    feats: Tensor,
    feat_lens: Tensor,
    method: str,
    streaming: bool,
    opts: SearchOptions,
) -> list[list[int]]:
    """CTC / attention (:func:`asrq.decode.ctc_attention.decode_batch`); ``greedy`` is its CTC
    greedy search."""
    method = "ctc_greedy" if method == "greedy" else method
    return CA.decode_batch(
        comp,
        feats,
        feat_lens,
        method,
        streaming,
        opts.beam,
        opts.ctc_weight,  # type: ignore[arg-type]
    )


#: The decoding of each model head, keyed by the model's ``head``.
DECODERS: dict[str, HeadDecoder] = {
    "rnnt": HeadDecoder(HEAD_METHODS["rnnt"], TorchRnnt, decode_rnnt_batch),
    "ctc_attention": HeadDecoder(
        HEAD_METHODS["ctc_attention"], CA.TorchCtcAttention, decode_ctc_attention_batch
    ),
}
