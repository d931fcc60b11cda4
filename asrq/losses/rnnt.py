"""RNN-T losses: full, simple, smoothed and pruned (k2's design, in plain PyTorch).

Pruned RNN-T (Kuang et al. 2022, "Pruned RNN-T for fast, memory-efficient ASR training",
arXiv 2206.13236) trains a transducer without the full ``(B, T, S+1, C)`` joiner lattice:

1. a *simple* loss with a trivial joiner ``log_softmax(lm[s] + am[t])`` whose normalizer is a
   matmul, so the lattice is never materialized (:func:`rnnt_loss_simple`,
   :func:`rnnt_loss_smoothed`); its occupation probabilities (``return_grad=True``) say
   where the alignment mass lies;
2. per frame, a window of ``s_range`` symbol positions around that mass
   (:func:`get_rnnt_prune_ranges`);
3. the real joiner evaluated only inside the window, ``(B, T, s_range, C)``
   (:func:`do_rnnt_pruning`), and an exact RNN-T loss on the pruned lattice
   (:func:`rnnt_loss_pruned`).

The names, shapes and conventions follow k2 (``k2/python/k2/rnnt_loss.py``), "regular" RNN-T
only (any number of symbols per frame; no modified/constrained variants):

- ``symbols``: int64 ``(B, S)``; ``lm``: ``(B, S+1, C)``; ``am``: ``(B, T, C)``.
- ``px``: ``(B, S, T+1)`` log-prob of emitting ``symbols[s]`` at node ``(s, t)``;
  ``px[:, :, T]`` (and ``px[b, :, T_b]``) is ``-inf``: no symbol on the one-past-last frame.
- ``py``: ``(B, S+1, T)`` log-prob of the termination (blank) symbol at node ``(s, t)``.
- ``boundary``: int64 ``(B, 4)`` rows ``[0, 0, S_b, T_b]`` (see :func:`rnnt_boundary`);
  ``None`` means ``[0, 0, S, T]`` for all. Padded symbols must still be valid ids (e.g. 0).
- ``termination_symbol`` is the blank id; the loss is ``-log p(symbols | frames)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from asrq.losses.mutual_information import mutual_information_recursion

__all__ = [
    "rnnt_boundary",
    "get_rnnt_logprobs",
    "get_rnnt_logprobs_smoothed",
    "get_rnnt_logprobs_joint",
    "get_rnnt_logprobs_pruned",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
    "rnnt_loss_full",
    "rnnt_loss_pruned",
    "get_rnnt_prune_ranges",
    "do_rnnt_pruning",
    "torchaudio_rnnt_loss",
]

_NEG_INF = float("-inf")


def rnnt_boundary(symbol_lens: Tensor, frame_lens: Tensor) -> Tensor:
    """k2/icefall boundary ``(B, 4)`` int64 rows ``[0, 0, S_b, T_b]`` from the two lengths."""
    if symbol_lens.shape != frame_lens.shape or symbol_lens.ndim != 1:
        raise ValueError(
            f"symbol_lens {tuple(symbol_lens.shape)} and frame_lens {tuple(frame_lens.shape)} "
            "must both have shape (B,)"
        )
    b = torch.zeros(symbol_lens.shape[0], 4, dtype=torch.int64, device=symbol_lens.device)
    b[:, 2] = symbol_lens
    b[:, 3] = frame_lens
    return b


def _reduce(neg_score: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return neg_score
    if reduction == "sum":
        return neg_score.sum()
    if reduction == "mean":
        return neg_score.mean()
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")


def _check_symbols(symbols: Tensor, B: int, S: int) -> None:
    if symbols.dtype != torch.int64 or tuple(symbols.shape) != (B, S):
        raise ValueError(
            f"symbols must be int64 of shape ({B}, {S}), got {symbols.dtype} {tuple(symbols.shape)}"
        )


def _fix_for_boundary(px: Tensor, boundary: Tensor | None) -> Tensor:
    """Set ``px[b, :, T_b] = -inf`` (no symbol after the last real frame); in place."""
    if boundary is None:
        return px
    B, S, T1 = px.shape
    index = boundary[:, 3].reshape(B, 1, 1).expand(B, S, 1)
    return px.scatter_(2, index, _NEG_INF)


def _append_neg_inf_frame(px: Tensor) -> Tensor:
    """``(B, S, T)`` -> ``(B, S, T+1)`` with ``-inf`` in the last frame."""
    B, S, _ = px.shape
    return torch.cat([px, px.new_full((B, S, 1), _NEG_INF)], dim=2)


def _lm_am_normalizers(lm: Tensor, am: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """log-sum-exp of ``lm[b, s] + am[b, t]`` over C for every (s, t) without the 4-D tensor.

    Returns ``(normalizers (B, S+1, T), lm_probs, am_probs, lm_max, am_max)`` where
    ``*_probs = exp(x - max_C x)``: one ``(B, S+1, C) x (B, C, T)`` matmul.
    """
    am_max = am.amax(dim=2, keepdim=True)  # (B, T, 1)
    lm_max = lm.amax(dim=2, keepdim=True)  # (B, S+1, 1)
    am_probs = (am - am_max).exp()
    lm_probs = (lm - lm_max).exp()
    tiny = torch.finfo(am_probs.dtype).tiny
    normalizers = (torch.matmul(lm_probs, am_probs.transpose(1, 2)) + tiny).log()
    normalizers = normalizers + lm_max + am_max.transpose(1, 2)  # (B, S+1, T)
    return normalizers, lm_probs, am_probs, lm_max, am_max


def _check_lm_am(lm: Tensor, am: Tensor, symbols: Tensor) -> tuple[int, int, int, int]:
    if lm.ndim != 3 or am.ndim != 3 or lm.shape[0] != am.shape[0] or lm.shape[2] != am.shape[2]:
        raise ValueError(
            f"need lm (B, S+1, C) and am (B, T, C), got {tuple(lm.shape)} and {tuple(am.shape)}"
        )
    B, T, C = am.shape
    S = lm.shape[1] - 1
    _check_symbols(symbols, B, S)
    return B, S, T, C


def get_rnnt_logprobs(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """px ``(B, S, T+1)`` and py ``(B, S+1, T)`` for the trivial joiner ``log_softmax(lm + am)``.

    Args:
        lm: ``(B, S+1, C)`` "language model" part of the unnormalized logits; ``lm[:, s]``
            has seen the symbols before position s.
        am: ``(B, T, C)`` acoustic part of the unnormalized logits.
        symbols: int64 ``(B, S)``. termination_symbol: the blank id.
        boundary: optional ``(B, 4)``, see the module docstring.
    """
    B, S, T, C = _check_lm_am(lm, am, symbols)
    normalizers = _lm_am_normalizers(lm, am)[0]
    px_am = am.gather(2, symbols.unsqueeze(1).expand(B, T, S)).transpose(1, 2)  # (B, S, T)
    px_lm = lm[:, :S].gather(2, symbols.unsqueeze(2))  # (B, S, 1)
    px = _append_neg_inf_frame(px_am + px_lm - normalizers[:, :S])
    py = am[:, :, termination_symbol].unsqueeze(1) + lm[:, :, termination_symbol].unsqueeze(2)
    py = py - normalizers  # (B, S+1, T)
    return _fix_for_boundary(px, boundary), py


def get_rnnt_logprobs_smoothed(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float = 0.25,
    am_only_scale: float = 0.0,
    boundary: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Like :func:`get_rnnt_logprobs` but interpolating, in log space (k2's definition),
    ``lm_only_scale * log p_lm + am_only_scale * log p_am + (1 - both) * log p_joint``,
    where ``p_lm = softmax(lm)`` and ``p_am`` is the acoustic model with a unigram LM
    (``softmax(lm)`` averaged over the batch and positions). ``lm`` should therefore be
    usable as a language model on its own."""
    B, S, T, C = _check_lm_am(lm, am, symbols)
    normalizers, lm_probs, am_probs, lm_max, am_max = _lm_am_normalizers(lm, am)
    tiny = torch.finfo(lm_probs.dtype).tiny
    lm_only_norm = lm_probs.sum(dim=2, keepdim=True)  # (B, S+1, 1), linear scale
    unigram = (lm_probs / lm_only_norm).mean(dim=(0, 1)) + tiny  # (C,)
    am_only_norm = torch.mv(am_probs.reshape(-1, C), unigram).reshape(B, T, 1).log() + am_max
    am_only_norm = am_only_norm.transpose(1, 2)  # (B, 1, T)
    log_unigram = unigram.log()
    lm_only_norm = lm_only_norm.log() + lm_max  # (B, S+1, 1)

    px_am = am.gather(2, symbols.unsqueeze(1).expand(B, T, S)).transpose(1, 2)  # (B, S, T)
    px_lm = lm[:, :S].gather(2, symbols.unsqueeze(2))  # (B, S, 1)
    px_unigram = log_unigram[symbols].unsqueeze(2)  # (B, S, 1)
    px = px_am + px_lm - normalizers[:, :S]  # (B, S, T); the -inf frame is added last
    px_am_only = px_am + px_unigram - am_only_norm
    px_lm_only = px_lm - lm_only_norm[:, :S]  # (B, S, 1), broadcast over frames

    py_am = am[:, :, termination_symbol].unsqueeze(1)  # (B, 1, T)
    py_lm = lm[:, :, termination_symbol].unsqueeze(2)  # (B, S+1, 1)
    py = py_am + py_lm - normalizers
    py_am_only = py_am + log_unigram[termination_symbol] - am_only_norm
    py_lm_only = py_lm - lm_only_norm

    joint_scale = 1.0 - lm_only_scale - am_only_scale
    # Everything mixed here is finite, so a zero scale is exact (k2 mixes the -inf frame in
    # and has to replace zero scales by 1e-20; a zero joint scale still gave NaN there).
    px = px * joint_scale + px_lm_only * lm_only_scale + px_am_only * am_only_scale
    py = py * joint_scale + py_lm_only * lm_only_scale + py_am_only * am_only_scale
    return _fix_for_boundary(_append_neg_inf_frame(px), boundary), py


def _mi_loss(
    px: Tensor, py: Tensor, boundary: Tensor | None, reduction: str, return_grad: bool
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    if return_grad:
        scores, grads = mutual_information_recursion(px, py, boundary, return_grad=True)
        return _reduce(-scores, reduction), grads
    return _reduce(-mutual_information_recursion(px, py, boundary), reduction)


def rnnt_loss_simple(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
    reduction: str = "sum",
    return_grad: bool = False,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """RNN-T loss of the trivial joiner ``log_softmax(lm[:, s] + am[:, t])``.

    Returns the loss (``(B,)`` for ``reduction="none"``, else a scalar), or
    ``(loss, (px_grad, py_grad))`` with ``return_grad``: the arc occupation probabilities
    (``d score / d px``, ``d score / d py`` per sequence), the input to
    :func:`get_rnnt_prune_ranges`.
    """
    px, py = get_rnnt_logprobs(lm, am, symbols, termination_symbol, boundary)
    return _mi_loss(px, py, boundary, reduction, return_grad)


def rnnt_loss_smoothed(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float = 0.25,
    am_only_scale: float = 0.0,
    boundary: Tensor | None = None,
    reduction: str = "sum",
    return_grad: bool = False,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """:func:`rnnt_loss_simple` on :func:`get_rnnt_logprobs_smoothed` (icefall's
    ``simple_loss`` uses ``lm_only_scale=0.25, am_only_scale=0.0``)."""
    px, py = get_rnnt_logprobs_smoothed(
        lm, am, symbols, termination_symbol, lm_only_scale, am_only_scale, boundary
    )
    return _mi_loss(px, py, boundary, reduction, return_grad)


def get_rnnt_logprobs_joint(
    logits: Tensor, symbols: Tensor, termination_symbol: int, boundary: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """px ``(B, S, T+1)`` and py ``(B, S+1, T)`` from full joiner logits ``(B, T, S+1, C)``."""
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, T, S+1, C), got {tuple(logits.shape)}")
    B, T, S1, C = logits.shape
    S = S1 - 1
    _check_symbols(symbols, B, S)
    normalizers = torch.logsumexp(logits, dim=3)  # (B, T, S+1)
    px = logits[:, :, :S].gather(3, symbols.reshape(B, 1, S, 1).expand(B, T, S, 1)).squeeze(3)
    px = _append_neg_inf_frame((px - normalizers[:, :, :S]).transpose(1, 2))
    py = (logits[:, :, :, termination_symbol] - normalizers).transpose(1, 2).contiguous()
    return _fix_for_boundary(px, boundary), py


def rnnt_loss_full(
    logits: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
    reduction: str = "sum",
) -> Tensor:
    """Exact RNN-T loss on the full joiner output ``(B, T, S+1, C)`` (k2's ``rnnt_loss``), via
    :func:`mutual_information_recursion`; the reference for the pruned loss."""
    px, py = get_rnnt_logprobs_joint(logits, symbols, termination_symbol, boundary)
    return _mi_loss(px, py, boundary, reduction, False)


def _monotonic_lower_bound(x: Tensor) -> Tensor:
    """``out[..., i] = min(x[..., i:])``: the largest non-decreasing sequence below ``x``."""
    return torch.cummin(x.flip(-1), dim=-1).values.flip(-1)


def _adjust_pruning_lower_bound(s_begin: Tensor, s_range: int) -> Tensor:
    """Make ``s_begin (B, T)`` non-decreasing, start at 0 and rise by less than ``s_range``
    per frame (so no symbol is skipped), only ever lowering values (k2's construction: the
    last condition is monotonicity of ``t * (s_range - 1) - s_begin[t]``)."""
    T = s_begin.shape[1]
    ramp = (s_range - 1) * torch.arange(T, device=s_begin.device)
    s_begin = _monotonic_lower_bound(s_begin)
    u = _monotonic_lower_bound(ramp - s_begin).clamp(min=0)
    return ramp - u


def get_rnnt_prune_ranges(
    px_grad: Tensor, py_grad: Tensor, boundary: Tensor, s_range: int
) -> Tensor:
    """Symbol positions to keep per frame, from the simple loss' occupation probabilities.

    The paper's bound (section 3.2; k2's current ``get_rnnt_prune_ranges``): at frame t pick
    the window start ``s`` maximizing the blank occupancy ``sum_{s <= k < s + s_range}
    py_grad[k, t]`` minus the symbol arc entering the window from below,
    ``px_grad[s - 1, t]``; then force the starts to be non-decreasing, to begin at 0, to rise
    by at most ``s_range - 1`` per frame, and to reach ``S_b - s_range + 1`` at the last real
    frame ``T_b - 1`` (padding frames keep that value).

    Args:
        px_grad: ``(B, S, T+1)``; py_grad: ``(B, S+1, T)`` (from ``return_grad=True``).
        boundary: int64 ``(B, 4)`` rows ``[0, 0, S_b, T_b]``.
        s_range: window size; values above ``S`` are lowered to ``S + 1`` (nothing pruned).
            Must be >= 2 unless ``S == 0``.

    Returns:
        int64 ``(B, T, s_range)``: ``ranges[b, t] = start[b, t] + arange(s_range)`` with
        ``0 <= start <= S + 1 - s_range``.

    Note: a path survives pruning only if ``S_b <= T_b * (s_range - 1)`` (at most
    ``s_range - 1`` symbols per frame inside the window); otherwise the pruned loss of that
    sequence is ``inf``. k2 asserts ``T >= S`` for this reason.
    """
    B, S, T1 = px_grad.shape
    T = T1 - 1
    if tuple(py_grad.shape) != (B, S + 1, T):
        raise ValueError(f"py_grad must be ({B}, {S + 1}, {T}), got {tuple(py_grad.shape)}")
    if boundary is None or tuple(boundary.shape) != (B, 4):
        raise ValueError(f"boundary must be a ({B}, 4) int64 tensor")
    s_range = min(s_range, S + 1)
    if s_range < 2 and S > 0:
        raise ValueError(
            f"s_range must be >= 2 for regular RNN-T (no path survives), got {s_range}"
        )

    n_start = S + 2 - s_range  # candidate window starts 0 .. S + 1 - s_range
    blank_mass = py_grad.unfold(1, s_range, 1).sum(dim=3)  # (B, n_start, T)
    px_grad_pad = torch.cat([px_grad.new_zeros(B, 1, T1), px_grad], dim=1)  # (B, S+1, T+1)
    score = blank_mass - px_grad_pad[:, :n_start, :T]
    s_begin = score.argmax(dim=1)  # (B, T)

    t = torch.arange(T, device=px_grad.device).unsqueeze(0)
    in_seq = t < boundary[:, 3:4] - 1  # frames before the last real one
    last_start = (boundary[:, 2:3] - s_range + 1).clamp(min=0)
    s_begin = torch.where(in_seq, s_begin, last_start)
    s_begin = _adjust_pruning_lower_bound(s_begin, s_range)
    return s_begin.unsqueeze(2) + torch.arange(s_range, device=px_grad.device)


def do_rnnt_pruning(am: Tensor, lm: Tensor, ranges: Tensor) -> tuple[Tensor, Tensor]:
    """Joiner inputs on the pruned lattice.

    Args:
        am: encoder side ``(B, T, E)``; lm: prediction-network side ``(B, S+1, D)``.
        ranges: int64 ``(B, T, s_range)`` from :func:`get_rnnt_prune_ranges`.

    Returns:
        ``am_pruned (B, T, s_range, E)`` (an expanded view) and
        ``lm_pruned (B, T, s_range, D)`` with ``lm_pruned[b, t, i] = lm[b, ranges[b, t, i]]``.
        The lm gather indexes ``lm`` directly, so its backward is a scatter-add into
        ``(B, S+1, D)`` (k2 gathers from a ``(B, T, S+1, D)`` expansion, whose gradient
        buffer is that big).
    """
    B, T, s_range = ranges.shape
    if am.shape[:2] != (B, T) or lm.shape[0] != B:
        raise ValueError(
            f"am {tuple(am.shape)} / lm {tuple(lm.shape)} do not match ranges {tuple(ranges.shape)}"
        )
    E, Dd = am.shape[2], lm.shape[2]
    am_pruned = am.unsqueeze(2).expand(B, T, s_range, E)
    index = ranges.reshape(B, T * s_range, 1).expand(B, T * s_range, Dd)
    lm_pruned = lm.gather(1, index).reshape(B, T, s_range, Dd)
    return am_pruned, lm_pruned


def get_rnnt_logprobs_pruned(
    logits: Tensor,
    symbols: Tensor,
    ranges: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """px ``(B, S, T+1)`` and py ``(B, S+1, T)`` from pruned logits ``(B, T, s_range, C)``;
    positions outside each frame's window get ``-inf``."""
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, T, s_range, C), got {tuple(logits.shape)}")
    B, T, s_range, C = logits.shape
    if tuple(ranges.shape) != (B, T, s_range):
        raise ValueError(f"ranges must be ({B}, {T}, {s_range}), got {tuple(ranges.shape)}")
    S = symbols.shape[1] if symbols.ndim == 2 else -1
    _check_symbols(symbols, B, S)
    if s_range > S + 1:
        raise ValueError(f"s_range {s_range} exceeds S + 1 = {S + 1}")

    normalizers = torch.logsumexp(logits, dim=3)  # (B, T, s_range)
    blank = symbols.new_full((B, 1), termination_symbol)
    # The symbol emitted at each kept position; position S (no symbol left) gets the blank,
    # whose px entry is dropped below.
    kept_symbols = (
        torch.cat([symbols, blank], dim=1)
        .gather(1, ranges.reshape(B, T * s_range))
        .reshape(B, T, s_range, 1)
    )
    px_kept = logits.gather(3, kept_symbols).squeeze(3) - normalizers
    py_kept = logits[:, :, :, termination_symbol] - normalizers
    full = logits.new_full((B, T, S + 1), _NEG_INF)
    px = full.scatter(2, ranges, px_kept)[:, :, :S]  # (B, T, S)
    py = full.scatter(2, ranges, py_kept)  # (B, T, S+1)
    px = _append_neg_inf_frame(px.transpose(1, 2))
    return _fix_for_boundary(px, boundary), py.transpose(1, 2).contiguous()


def rnnt_loss_pruned(
    logits: Tensor,
    symbols: Tensor,
    ranges: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
    reduction: str = "sum",
) -> Tensor:
    """Exact RNN-T loss on the pruned lattice: joiner logits ``(B, T, s_range, C)`` computed
    from :func:`do_rnnt_pruning` with ``ranges (B, T, s_range)``. Equals the full loss when
    ``s_range = S + 1``; otherwise it is >= the full loss (fewer paths)."""
    px, py = get_rnnt_logprobs_pruned(logits, symbols, ranges, termination_symbol, boundary)
    return _mi_loss(px, py, boundary, reduction, False)


def torchaudio_rnnt_loss(
    logits: Tensor,
    symbols: Tensor,
    logit_lens: Tensor,
    target_lens: Tensor,
    blank: int = 0,
    reduction: str = "sum",
    clamp: float = -1.0,
) -> Tensor:
    """``torchaudio.functional.rnnt_loss`` with this module's argument conventions.

    Args:
        logits: float32 ``(B, T, S+1, C)`` joiner output (log-softmax is fused inside);
            ``T`` must equal ``max(logit_lens)`` and ``S`` ``max(target_lens)``.
        symbols: ``(B, S)`` targets (any int dtype; cast to int32).
        logit_lens, target_lens: ``(B,)`` frames and symbols per sequence (cast to int32).
        blank: the blank id (our ``termination_symbol``); torchaudio's default is -1.
    """
    import torchaudio.functional as taF  # imported lazily: only this wrapper needs it

    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    return taF.rnnt_loss(
        logits,
        symbols.to(torch.int32),
        logit_lens.to(torch.int32),
        target_lens.to(torch.int32),
        blank=blank,
        clamp=clamp,
        reduction=reduction,
    )
