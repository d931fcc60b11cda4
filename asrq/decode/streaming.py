"""Streaming decoding: fbank frames -> encoder chunks with carried states -> incremental search.

A chunk of ``C`` encoder frames consumes a window of ``4C + 3`` fbank frames and the next
window starts ``4C`` frames later (the subsampling's receptive field overlaps by 3 frames;
see :mod:`asrq.models.subsampling`). A window past the end of the audio is padded with
:data:`LOG_EPSILON` (lhotse's fbank padding value) and its true length is passed as
``x_lens``, so the encoder marks the frames it cannot compute as invalid. The result equals
greedy / beam search over the chunk-masked full-sequence encoder output
(``encoder(x, chunk_size=C, left_chunks=L // C)`` when ``C`` divides ``L``).

Two drivers:

- :class:`Streamer`: one stream fed fbank frames as they arrive (``accept`` / ``finish``).
- :func:`stream_decode_batch`: N utterances advance chunk by chunk together (evaluation);
  a finished utterance gets windows with 0 valid frames, which the search skips.

Shapes: N streams, T fbank frames, F fbank bins, C chunk (encoder frames), J joiner width.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from asrq.decode.ctc import ctc_greedy
from asrq.decode.interface import RnntComponents
from asrq.decode.search import BeamState, GreedyState, beam_advance, greedy_advance
from asrq.models.subsampling import RIGHT_CONTEXT_FRAMES

#: lhotse's padding value for log-mel features (``lhotse.utils.LOG_EPSILON``).
LOG_EPSILON = math.log(1e-10)
SUBSAMPLING = 4

StreamMethod = Literal["greedy", "modified_beam_search"]


def window_frames(chunk_frames: int) -> int:
    """fbank frames one streaming window holds: ``4C + 3``."""
    return SUBSAMPLING * chunk_frames + RIGHT_CONTEXT_FRAMES


def encoder_frames(num_fbank_frames: int) -> int:
    """Encoder frames a full utterance of ``T`` fbank frames gives (``((T - 1) // 2 - 1) // 2``)."""
    return max(0, ((num_fbank_frames - 1) // 2 - 1) // 2)


def num_chunks(num_fbank_frames: int, chunk_frames: int) -> int:
    """Streaming windows needed to produce every encoder frame of a ``T``-frame utterance."""
    return -(-encoder_frames(num_fbank_frames) // chunk_frames)


def iter_windows(
    feats: Tensor, feat_lens: Tensor, chunk_frames: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """Split a padded batch into streaming windows.

    feats (N, T, F), feat_lens (N,) -> yields x (N, 4C + 3, F), x_lens (N,) valid frames in the
    window (0 once a row has ended), until every row has produced all its encoder frames.
    """
    w, hop = window_frames(chunk_frames), SUBSAMPLING * chunk_frames
    lens = [int(v) for v in feat_lens.tolist()]
    k_max = max((num_chunks(t, chunk_frames) for t in lens), default=0)
    if k_max == 0:
        return
    need = hop * (k_max - 1) + w
    n, t, f = feats.shape
    if t < need:
        pad = torch.full((n, need - t, f), LOG_EPSILON, dtype=feats.dtype, device=feats.device)
        feats = torch.cat([feats, pad], dim=1)
    lens_t = feat_lens.to(torch.int64).cpu()
    for k in range(k_max):
        s = hop * k
        yield feats[:, s : s + w], (lens_t - s).clamp(min=0, max=w)


def _new_search_state(
    comp: RnntComponents, n: int, method: str, device: torch.device
) -> GreedyState | BeamState:
    if method == "greedy":
        return GreedyState.create(comp, n, device)
    if method == "modified_beam_search":
        return BeamState.create(comp, n)
    raise ValueError(f"unknown streaming search method {method!r} (greedy, modified_beam_search)")


def _advance(
    comp: RnntComponents,
    enc: Tensor,
    valid: Tensor,
    state: GreedyState | BeamState,
    beam: int,
    max_sym: int,
) -> None:
    if isinstance(state, GreedyState):
        greedy_advance(comp, enc, valid, state, max_sym)
    else:
        beam_advance(comp, enc, valid, state, beam)


def stream_decode_batch(
    comp: RnntComponents,
    feats: Tensor,
    feat_lens: Tensor,
    method: StreamMethod = "greedy",
    beam: int = 4,
    max_sym_per_frame: int = 1,
) -> list[list[int]]:
    """Streaming decode of a padded batch: feats (N, T, F), feat_lens (N,) -> tokens per utterance.

    All utterances advance chunk by chunk together through ``comp.encode_chunk``; the search
    consumes each chunk's valid encoder frames as soon as they exist.
    """
    n = feats.shape[0]
    states = comp.init_states(n)
    search = None
    for x, x_lens in iter_windows(feats, feat_lens, comp.chunk_frames):
        enc, valid, states = comp.encode_chunk(x, x_lens, states)
        if search is None:
            search = _new_search_state(comp, n, method, enc.device)
        _advance(comp, enc, valid, search, beam, max_sym_per_frame)
    if search is None:
        _new_search_state(comp, 0, method, feats.device)  # validates ``method``
        return [[] for _ in range(n)]
    return search.tokens()


def stream_ctc_greedy_batch(comp, feats: Tensor, feat_lens: Tensor) -> list[list[int]]:
    """Streaming CTC greedy decode of a padded batch (``comp`` must offer ``ctc_log_probs_chunk``,
    as :class:`~asrq.decode.torch_backend.TorchRnnt` does)."""
    n = feats.shape[0]
    states = comp.init_states(n)
    chunks, valids = [], []
    for x, x_lens in iter_windows(feats, feat_lens, comp.chunk_frames):
        lp, valid, states = comp.ctc_log_probs_chunk(x, x_lens, states)
        chunks.append(lp)
        valids.append(valid)
    if not chunks:
        return [[] for _ in range(n)]
    # a row's valid frames are a prefix of each chunk and its chunks end together: concatenated,
    # they form a prefix of length sum(valid)
    return ctc_greedy(torch.cat(chunks, dim=1), torch.stack(valids).sum(dim=0), comp.blank_id)


class Streamer:
    """Online decoding of one stream: feed fbank frames with :meth:`accept` as they come,
    call :meth:`finish` at the end of the audio; :attr:`tokens` holds the result so far.

    Example::

        s = Streamer(comp)
        for frames in fbank_blocks:      # (t, F) each, any t
            s.accept(frames)
            print(sp.decode(s.tokens))   # partial result
        tokens = s.finish()
    """

    def __init__(
        self,
        comp: RnntComponents,
        method: StreamMethod = "greedy",
        beam: int = 4,
        max_sym_per_frame: int = 1,
    ) -> None:
        self.comp = comp
        self.beam = beam
        self.max_sym = max_sym_per_frame
        self.states = comp.init_states(1)
        self.search = _new_search_state(comp, 1, method, torch.device("cpu"))
        self.window = window_frames(comp.chunk_frames)
        self.hop = SUBSAMPLING * comp.chunk_frames
        self.buffer: Tensor | None = None  # (t, F) frames not yet consumed
        self.num_frames = 0  # fbank frames accepted so far
        self.chunks_done = 0
        self.finished = False

    @property
    def tokens(self) -> list[int]:
        return self.search.tokens()[0]

    def _run(self, x: Tensor, valid: int) -> None:
        enc, enc_valid, self.states = self.comp.encode_chunk(
            x[None], torch.tensor([valid], dtype=torch.int64), self.states
        )
        _advance(self.comp, enc, enc_valid, self.search, self.beam, self.max_sym)
        self.chunks_done += 1
        self.buffer = self.buffer[self.hop :]

    def accept(self, frames: Tensor) -> list[int]:
        """Append fbank frames (t, F); decode every complete window. Returns the tokens so far."""
        if self.finished:
            raise RuntimeError("Streamer.accept after finish()")
        if frames.dim() != 2:
            raise ValueError(f"expected fbank frames (t, F), got shape {tuple(frames.shape)}")
        frames = frames.float()
        self.buffer = frames if self.buffer is None else torch.cat([self.buffer, frames], dim=0)
        self.num_frames += frames.shape[0]
        while self.buffer.shape[0] >= self.window:
            self._run(self.buffer[: self.window], self.window)
        return self.tokens

    def finish(self) -> list[int]:
        """Decode the tail (padded windows) and return the final tokens."""
        if not self.finished:
            self.finished = True
            total = num_chunks(self.num_frames, self.comp.chunk_frames)
            while self.chunks_done < total:
                valid = min(self.buffer.shape[0], self.window)
                pad = self.window - valid
                x = self.buffer[:valid]
                if pad:
                    x = torch.cat(
                        [x, torch.full((pad, x.shape[1]), LOG_EPSILON, dtype=x.dtype)], dim=0
                    )
                self._run(x, valid)
        return self.tokens


def stream_decode(
    comp: RnntComponents,
    feats: Tensor,
    method: StreamMethod = "greedy",
    beam: int = 4,
    max_sym_per_frame: int = 1,
) -> list[int]:
    """Chunk-by-chunk decode of one utterance's fbank ``(T, F)`` (through :class:`Streamer`)."""
    s = Streamer(comp, method, beam, max_sym_per_frame)
    s.accept(feats)
    return s.finish()
