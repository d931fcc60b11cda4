"""RNN-T search over :class:`~asrq.decode.interface.RnntComponents`: batched greedy search and
icefall's modified beam search
(``egs/librispeech/ASR/pruned_transducer_stateless*/beam_search.py``).

Both are resumable: a :class:`GreedyState` / :class:`BeamState` holds the hypotheses of each
stream, and :func:`greedy_advance` / :func:`beam_advance` consume encoder frames from wherever
the previous call stopped. Feeding the encoder output chunk by chunk therefore gives exactly
the result of one call over the concatenated frames (streaming decoding relies on it).

Hypotheses start with the predictor context ``[-1] * (context_size - 1) + [blank]``, as in
icefall: ``-1`` is padding (zero embedding), matching the left zero padding the predictor sees
in training after the blank start symbol. The predictor is stateless, so its output depends
only on the last ``context_size`` tokens.

Shapes: N streams, T' encoder frames, J joiner width, V vocab, H hypotheses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from asrq.decode.interface import RnntComponents


def _initial_context(comp: RnntComponents) -> list[int]:
    return [-1] * (comp.context_size - 1) + [comp.blank_id]


def _predict(comp: RnntComponents, contexts: list[list[int]], device: torch.device) -> Tensor:
    """Predictor on a list of token contexts (each ``context_size`` long) -> (H, J)."""
    return comp.predict(torch.tensor(contexts, dtype=torch.int64, device=device))


# --------------------------------------------------------------------------------------------
# greedy
# --------------------------------------------------------------------------------------------
@dataclass
class GreedyState:
    """Greedy-search state of N streams.

    ``hyps[i]``: the initial context followed by the tokens emitted so far;
    ``pred``: (N, J) predictor output for the last ``context_size`` tokens of each hyp.
    """

    hyps: list[list[int]]
    pred: Tensor
    context_size: int

    @classmethod
    def create(
        cls, comp: RnntComponents, batch_size: int, device: torch.device | str = "cpu"
    ) -> GreedyState:
        hyps = [_initial_context(comp) for _ in range(batch_size)]
        pred = _predict(comp, hyps, torch.device(device)) if batch_size else torch.zeros(0)
        return cls(hyps=hyps, pred=pred, context_size=comp.context_size)

    def tokens(self) -> list[list[int]]:
        """Emitted tokens of each stream (the initial context removed)."""
        return [h[self.context_size :] for h in self.hyps]


def greedy_advance(
    comp: RnntComponents,
    enc: Tensor,
    enc_lens: Tensor,
    state: GreedyState,
    max_sym_per_frame: int = 1,
) -> GreedyState:
    """Consume encoder frames: enc (N, T', J) projected, enc_lens (N,) valid frames of each stream
    (0 for a stream with nothing new). Updates ``state`` in place and returns it.

    Per frame: join, argmax; a non-blank symbol is appended and the predictor re-run for those
    streams, up to ``max_sym_per_frame`` symbols per frame (blank moves to the next frame).
    """
    if max_sym_per_frame < 1:
        raise ValueError("max_sym_per_frame must be >= 1")
    n = enc.shape[0]
    if n != len(state.hyps):
        raise ValueError(f"encoder batch {n} != {len(state.hyps)} streams in the greedy state")
    lens = [int(v) for v in enc_lens.tolist()]
    dev = enc.device
    state.pred = state.pred.to(dev)
    blank, ctx = comp.blank_id, comp.context_size
    for t in range(max(lens, default=0)):
        rows = [i for i in range(n) if lens[i] > t]
        if len(rows) == n:
            e, pred = enc[:, t], state.pred
        else:
            idx = torch.tensor(rows, device=dev)
            e, pred = enc[idx, t], state.pred[idx]
        for _ in range(max_sym_per_frame):
            y = comp.join(e, pred).argmax(dim=-1).tolist()
            emitted = [k for k, v in enumerate(y) if v != blank]
            if not emitted:
                break
            for k in emitted:
                state.hyps[rows[k]].append(int(y[k]))
            rows = [rows[k] for k in emitted]
            new_pred = _predict(comp, [state.hyps[r][-ctx:] for r in rows], dev)
            state.pred = state.pred.index_copy(
                0, torch.tensor(rows, device=dev), new_pred.to(state.pred.dtype)
            )
            if max_sym_per_frame > 1:
                e, pred = e[torch.tensor(emitted, device=dev)], new_pred
    return state


def greedy_search(
    comp: RnntComponents, enc: Tensor, enc_lens: Tensor, max_sym_per_frame: int = 1
) -> list[list[int]]:
    """Batched greedy search: enc (N, T', J) projected, enc_lens (N,) -> tokens of each
    utterance."""
    state = GreedyState.create(comp, enc.shape[0], enc.device)
    return greedy_advance(comp, enc, enc_lens, state, max_sym_per_frame).tokens()


# --------------------------------------------------------------------------------------------
# modified beam search
# --------------------------------------------------------------------------------------------
def _log_add(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b == -math.inf:
        return a
    return a + math.log1p(math.exp(b - a))


@dataclass
class Hypothesis:
    """One hypothesis: ``ys`` (initial context + tokens), total ``log_prob`` over the alignments
    merged into it, and the cached predictor output ``pred`` (J,) for its context."""

    ys: list[int]
    log_prob: float
    pred: Tensor | None = None


@dataclass
class BeamState:
    """Modified-beam-search state: per stream, its hypotheses keyed by token sequence."""

    hyps: list[dict[tuple[int, ...], Hypothesis]] = field(default_factory=list)
    context_size: int = 1

    @classmethod
    def create(cls, comp: RnntComponents, batch_size: int) -> BeamState:
        ys = _initial_context(comp)
        return cls(
            [{tuple(ys): Hypothesis(list(ys), 0.0)} for _ in range(batch_size)], comp.context_size
        )

    def best_hyps(self, length_norm: bool = False) -> list[Hypothesis]:
        """The most probable hypothesis of each stream (``length_norm``: by log_prob / len(ys),
        icefall's default)."""

        def key(h: Hypothesis) -> float:
            return h.log_prob / len(h.ys) if length_norm else h.log_prob

        return [max(b.values(), key=key) for b in self.hyps]

    def tokens(self, length_norm: bool = False) -> list[list[int]]:
        return [h.ys[self.context_size :] for h in self.best_hyps(length_norm)]


def beam_advance(
    comp: RnntComponents, enc: Tensor, enc_lens: Tensor, state: BeamState, beam: int = 4
) -> BeamState:
    """Modified beam search over encoder frames enc (N, T', J), enc_lens (N,); updates ``state``.

    Per frame, every hypothesis of every active stream is extended by blank or one symbol
    (joiner log-softmax added to its score); the ``beam`` best extensions of each stream are
    kept, and extensions with the same token sequence are merged by log-add (icefall's
    ``modified_beam_search``). All hypotheses of all streams go through predictor and joiner
    as one batch.
    """
    if beam < 1:
        raise ValueError("beam must be >= 1")
    n = enc.shape[0]
    if n != len(state.hyps):
        raise ValueError(f"encoder batch {n} != {len(state.hyps)} streams in the beam state")
    lens = [int(v) for v in enc_lens.tolist()]
    dev = enc.device
    ctx, v_size = comp.context_size, comp.vocab_size
    for t in range(max(lens, default=0)):
        active = [i for i in range(n) if lens[i] > t]
        flat: list[Hypothesis] = []
        owner: list[int] = []  # position in ``active``
        slot: list[int] = []  # position within the stream's hypotheses
        for a, i in enumerate(active):
            for s, h in enumerate(state.hyps[i].values()):
                flat.append(h)
                owner.append(a)
                slot.append(s)
        missing = [k for k, h in enumerate(flat) if h.pred is None]
        if missing:
            new_pred = _predict(comp, [flat[k].ys[-ctx:] for k in missing], dev)
            for j, k in enumerate(missing):
                flat[k].pred = new_pred[j]
        pred = torch.stack([h.pred for h in flat]).to(dev)  # (H, J)
        rows = torch.tensor([active[a] for a in owner], device=dev)
        logp = comp.join(enc[rows, t], pred).float().log_softmax(dim=-1)  # (H, V)
        logp = logp + torch.tensor([h.log_prob for h in flat], device=dev)[:, None]
        max_slots = max(slot) + 1
        scores = torch.full((len(active), max_slots, v_size), -math.inf, device=dev)
        scores[torch.tensor(owner, device=dev), torch.tensor(slot, device=dev)] = logp
        k = min(beam, max_slots * v_size)
        top_v, top_i = scores.view(len(active), -1).topk(k, dim=-1)
        top_v, top_i = top_v.tolist(), top_i.tolist()
        for a, i in enumerate(active):
            old = list(state.hyps[i].values())
            new: dict[tuple[int, ...], Hypothesis] = {}
            for score, ix in zip(top_v[a], top_i[a], strict=True):
                if score == -math.inf:
                    continue
                h = old[ix // v_size]
                token = ix % v_size
                if token == comp.blank_id:
                    ys, p = h.ys, h.pred
                else:
                    ys, p = h.ys + [token], None
                key = tuple(ys)
                if key in new:
                    new[key].log_prob = _log_add(new[key].log_prob, score)
                else:
                    new[key] = Hypothesis(ys, score, p)
            state.hyps[i] = new
    return state


def modified_beam_search(
    comp: RnntComponents, enc: Tensor, enc_lens: Tensor, beam: int = 4, length_norm: bool = False
) -> list[list[int]]:
    """Batched modified beam search (one symbol per frame): enc (N, T', J), enc_lens (N,) ->
    tokens of the best hypothesis of each utterance (by total log-prob; ``length_norm`` divides
    it by the sequence length as icefall's decode scripts do)."""
    state = beam_advance(comp, enc, enc_lens, BeamState.create(comp, enc.shape[0]), beam)
    return state.tokens(length_norm)
