"""Decoding the hybrid CTC / attention model (WeNet U2++ style).

Methods:

- ``ctc_greedy``: best path of the CTC head (streaming: chunk by chunk, the same result).
- ``ctc_prefix_beam``: CTC prefix beam search (Graves 2012 / Hannun et al. 2014; WeNet's
  ``ctc_prefix_beam_search``): prefixes with their blank / non-blank ending log-probabilities
  summed over every alignment; the best prefix wins.
- ``attention_rescoring``: the prefix beam search n-best rescored by the attention decoder
  (teacher forcing, one batched call per utterance):
  ``score = ctc_weight * ctc_score + attention_score`` (WeNet's ``attention_rescoring``; the
  optional right-to-left decoder is not implemented).

All of them run against :class:`CtcAttentionComponents`, offered by the eager model
(:class:`TorchCtcAttention`) and the exported programs (:mod:`asrq.runtime.ctc_attention`).
Streaming runs the chunked encoder with carried states and searches the concatenated chunk
outputs: the searches are frame-synchronous and causal, so this equals searching each chunk as
it arrives; rescoring happens at the end of the utterance (as in WeNet's runtime).

Shapes: N batch, T fbank frames, F fbank bins, T' encoder frames, C chunk (encoder frames),
D encoder width, V vocab, B hypotheses, U decoder steps.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from asrq.decode.ctc import ctc_greedy
from asrq.decode.streaming import iter_windows
from asrq.decode.torch_backend import EagerComponents
from asrq.utils.io import AsrqError

Method = Literal["ctc_greedy", "ctc_prefix_beam", "attention_rescoring"]
METHODS: tuple[str, ...] = ("ctc_greedy", "ctc_prefix_beam", "attention_rescoring")
#: One n-best list: (tokens, CTC log-probability) pairs, best first.
NBest = list[tuple[list[int], float]]
NEG_INF = -math.inf


@runtime_checkable
class CtcAttentionComponents(Protocol):
    """What the hybrid searches need from a backend (torch CPU tensors in and out)."""

    vocab_size: int
    blank_id: int
    sos_id: int
    eos_id: int
    #: encoder frames per streaming chunk (C); a chunk consumes 4C + 3 fbank frames, advancing 4C.
    chunk_frames: int

    def encode(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Full context: x (N, T, F), x_lens (N,) -> encoder_out (N, T', D), lengths (N,),
        CTC log-probs (N, T', V)."""
        ...

    def init_states(self, batch_size: int) -> list[Tensor]:
        """Initial streaming encoder states."""
        ...

    def encode_chunk(
        self, x: Tensor, x_lens: Tensor, states: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """Streaming step: x (N, 4C + 3, F), x_lens (N,) -> encoder_out (N, C, D), valid frames
        (N,), CTC log-probs (N, C, V), new states."""
        ...

    def decoder_log_probs(
        self, enc: Tensor, enc_lens: Tensor, hyps_in: Tensor, hyps_lens: Tensor
    ) -> Tensor:
        """Attention decoder: enc (B, T', D), enc_lens (B,), hyps_in (B, U) int64 (``<sos>`` +
        tokens, padded), hyps_lens (B,) -> log-probs (B, U, V)."""
        ...


# --------------------------------------------------------------------------------------------
# CTC prefix beam search
# --------------------------------------------------------------------------------------------
def _log_add(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


def ctc_prefix_beam_search_one(log_probs: Tensor, beam: int, blank: int = 0) -> NBest:
    """Prefix beam search over one utterance's CTC log-probs ``(T, V)``.

    Each prefix keeps ``(pb, pnb)``: the log-probability of all alignments of the frames so far
    that collapse to it and end in blank / in its last token. Per frame only the ``beam`` most
    probable tokens are expanded and the ``beam`` best prefixes (by ``logaddexp(pb, pnb)``) kept.
    With ``beam >= V`` and more prefixes than can exist, the scores are exact sums over
    alignments. Returns up to ``beam`` ``(tokens, log-prob)`` pairs, best first.
    """
    if log_probs.dim() != 2:
        raise ValueError(f"expected log_probs (T, V), got shape {tuple(log_probs.shape)}")
    if beam < 1:
        raise ValueError("beam must be >= 1")
    t, v = log_probs.shape
    k = min(beam, v)
    top_v, top_i = log_probs.float().topk(k, dim=-1)
    top_v, top_i = top_v.tolist(), top_i.tolist()
    hyps: list[tuple[tuple[int, ...], tuple[float, float]]] = [((), (0.0, NEG_INF))]
    for f in range(t):
        nxt: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [NEG_INF, NEG_INF])
        for s, ps in zip(top_i[f], top_v[f], strict=True):
            for prefix, (pb, pnb) in hyps:
                if s == blank:  # stays the same prefix, now ending in blank
                    e = nxt[prefix]
                    e[0] = _log_add(e[0], _log_add(pb, pnb) + ps)
                elif prefix and s == prefix[-1]:
                    e = nxt[prefix]  # repeat collapses into the same prefix
                    e[1] = _log_add(e[1], pnb + ps)
                    e = nxt[(*prefix, s)]  # a blank in between makes a new token
                    e[1] = _log_add(e[1], pb + ps)
                else:
                    e = nxt[(*prefix, s)]
                    e[1] = _log_add(e[1], _log_add(pb, pnb) + ps)
        scored = [(_log_add(pb, pnb), p, pb, pnb) for p, (pb, pnb) in nxt.items()]
        # extensions no alignment reaches (from a -inf blank / non-blank ending) are dropped
        scored = [x for x in scored if x[0] > NEG_INF] or scored
        scored.sort(key=lambda x: x[0], reverse=True)
        hyps = [(p, (pb, pnb)) for _, p, pb, pnb in scored[:beam]]
    return [(list(p), _log_add(pb, pnb)) for p, (pb, pnb) in hyps]


def ctc_prefix_beam_search(
    log_probs: Tensor, lens: Tensor, beam: int = 4, blank: int = 0
) -> list[NBest]:
    """Batched wrapper: log_probs (N, T', V), lens (N,) -> an n-best list per utterance."""
    if log_probs.dim() != 3:
        raise ValueError(f"expected log_probs (N, T, V), got shape {tuple(log_probs.shape)}")
    lp = log_probs.detach().float().cpu()
    return [
        ctc_prefix_beam_search_one(lp[i, : int(n)], beam, blank)
        for i, n in enumerate(lens.tolist())
    ]


# --------------------------------------------------------------------------------------------
# attention rescoring
# --------------------------------------------------------------------------------------------
def attention_scores(
    comp: CtcAttentionComponents, enc: Tensor, enc_len: int, hyps: list[list[int]]
) -> list[float]:
    """Decoder log-probability of each hypothesis of one utterance, ``<eos>`` included:
    ``sum_u log p(y_u | <sos> y_<u, enc) + log p(<eos> | <sos> y, enc)``. enc: (T', D)."""
    if not hyps:
        return []
    b = len(hyps)
    u = max(len(h) for h in hyps) + 1
    hyps_in = torch.full((b, u), comp.eos_id, dtype=torch.int64)  # padding: any id (masked)
    hyps_in[:, 0] = comp.sos_id
    target = torch.full((b, u), comp.eos_id, dtype=torch.int64)
    for i, h in enumerate(hyps):
        if h:
            hyps_in[i, 1 : len(h) + 1] = torch.tensor(h, dtype=torch.int64)
            target[i, : len(h)] = torch.tensor(h, dtype=torch.int64)
    hyps_lens = torch.tensor([len(h) + 1 for h in hyps], dtype=torch.int64)
    enc_b = enc[None, :enc_len].expand(b, enc_len, enc.shape[-1]).contiguous()
    lens_b = torch.full((b,), enc_len, dtype=torch.int64)
    lp = comp.decoder_log_probs(enc_b, lens_b, hyps_in, hyps_lens).float().cpu()  # (B, U, V)
    tok = lp.gather(-1, target[..., None])[..., 0]  # (B, U)
    valid = torch.arange(u)[None, :] < hyps_lens[:, None]
    return (tok * valid).sum(dim=-1).tolist()


def rescore(nbest: NBest, att: list[float], ctc_weight: float) -> tuple[list[int], float]:
    """Best hypothesis by ``ctc_weight * ctc + att`` -> (tokens, combined score)."""
    if not nbest:
        return [], 0.0
    scores = [ctc_weight * c + a for (_, c), a in zip(nbest, att, strict=True)]
    best = max(range(len(scores)), key=scores.__getitem__)
    return nbest[best][0], scores[best]


def attention_rescoring(
    comp: CtcAttentionComponents,
    enc: Tensor,
    enc_lens: Tensor,
    nbests: list[NBest],
    ctc_weight: float = 0.5,
) -> list[list[int]]:
    """Rescore each utterance's n-best with the decoder. enc (N, T', D), enc_lens (N,)."""
    out = []
    for i, nb in enumerate(nbests):
        if int(enc_lens[i]) == 0:  # nothing to attend: the CTC best (the empty hypothesis)
            out.append(nb[0][0] if nb else [])
            continue
        att = attention_scores(comp, enc[i], int(enc_lens[i]), [h for h, _ in nb])
        out.append(rescore(nb, att, ctc_weight)[0])
    return out


# --------------------------------------------------------------------------------------------
# drivers
# --------------------------------------------------------------------------------------------
class CtcGreedyState:
    """Online CTC greedy search of N streams: feed each chunk's log-probs with :meth:`advance`;
    the last frame's symbol is carried across chunks, so the result equals :func:`ctc_greedy` over
    the concatenated chunks."""

    def __init__(self, batch_size: int, blank: int = 0) -> None:
        self.blank = blank
        self.prev = [-1] * batch_size
        self.hyps: list[list[int]] = [[] for _ in range(batch_size)]

    def advance(self, log_probs: Tensor, valid: Tensor) -> CtcGreedyState:
        """log_probs (N, C, V) of one chunk, valid (N,) frames of each stream in it."""
        ids = log_probs.argmax(dim=-1).cpu().tolist()  # (N, C)
        for i, n in enumerate(valid.tolist()):
            for s in ids[i][: int(n)]:
                if s != self.blank and s != self.prev[i]:
                    self.hyps[i].append(s)
                self.prev[i] = s
        return self

    def tokens(self) -> list[list[int]]:
        return [list(h) for h in self.hyps]


def encode_streaming(
    comp: CtcAttentionComponents, feats: Tensor, feat_lens: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Chunk-by-chunk encoder over a padded batch: feats (N, T, F), feat_lens (N,) ->
    encoder_out (N, T', D), lengths (N,), CTC log-probs (N, T', V), concatenated over chunks.

    A row's valid frames are a prefix of each chunk and its chunks end together, so the valid
    frames of the concatenation are a prefix of length ``sum(valid)``."""
    n = feats.shape[0]
    states = comp.init_states(n)
    encs, lps, valids = [], [], []
    for x, x_lens in iter_windows(feats, feat_lens, comp.chunk_frames):
        enc, valid, lp, states = comp.encode_chunk(x, x_lens, states)
        encs.append(enc)
        lps.append(lp)
        valids.append(valid.to(torch.int64).cpu())
    if not encs:
        return (
            torch.zeros(n, 0, 0),
            torch.zeros(n, dtype=torch.int64),
            torch.zeros(n, 0, comp.vocab_size),
        )
    return torch.cat(encs, dim=1), torch.stack(valids).sum(dim=0), torch.cat(lps, dim=1)


def decode_batch(
    comp: CtcAttentionComponents,
    feats: Tensor,
    feat_lens: Tensor,
    method: Method = "ctc_greedy",
    streaming: bool = False,
    beam: int = 4,
    ctc_weight: float = 0.5,
) -> list[list[int]]:
    """feats (N, T, F), feat_lens (N,) -> token ids per utterance, by ``method`` (module doc)."""
    if method not in METHODS:
        raise AsrqError(
            f"unknown ctc_attention decoding method {method!r}; choose one of {', '.join(METHODS)}"
        )
    if streaming:
        enc, lens, lp = encode_streaming(comp, feats, feat_lens)
    else:
        enc, lens, lp = comp.encode(feats, feat_lens)
    lens = lens.cpu()
    if method == "ctc_greedy":
        return ctc_greedy(lp, lens, comp.blank_id)
    nbests = ctc_prefix_beam_search(lp, lens, beam, comp.blank_id)
    if method == "ctc_prefix_beam":
        return [nb[0][0] if nb else [] for nb in nbests]
    return attention_rescoring(comp, enc, lens, nbests, ctc_weight)


# --------------------------------------------------------------------------------------------
# the eager model
# --------------------------------------------------------------------------------------------
class TorchCtcAttention(EagerComponents):
    """:class:`CtcAttentionComponents` over an eager
    :class:`~asrq.models.ctc_attention.CtcAttentionModel` (not copied; put it in eval mode).

    Args:
        chunk_frames: C, encoder frames per streaming chunk.
        left_frames: L, encoder frames of left context kept in the streaming attention cache.
    """

    def __init__(self, model: torch.nn.Module, chunk_frames: int, left_frames: int) -> None:
        super().__init__(model, chunk_frames, left_frames)  # type: ignore[arg-type]
        self.sos_id = int(model.sos_id)
        self.eos_id = int(model.eos_id)

    @torch.inference_mode()
    def encode(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        enc, lens = self.run_encoder(x, x_lens)
        return enc, lens, self.model.ctc_log_probs(enc)

    @torch.inference_mode()
    def encode_chunk(
        self, x: Tensor, x_lens: Tensor, states: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        enc, lens, states = self.run_encoder_chunk(x, x_lens, states)
        return enc, lens, self.model.ctc_log_probs(enc), states

    @torch.inference_mode()
    def decoder_log_probs(
        self, enc: Tensor, enc_lens: Tensor, hyps_in: Tensor, hyps_lens: Tensor
    ) -> Tensor:
        dev = self.device
        return self.model.decoder_log_probs(
            enc.to(dev), enc_lens.to(dev), hyps_in.to(dev), hyps_lens.to(dev)
        )
