"""The monotonic-alignment recursion behind k2's RNN-T losses, in plain PyTorch.

k2 (``k2/python/k2/mutual_information.py``) computes, for ``px`` of shape ``(B, S, T+1)`` and
``py`` of shape ``(B, S+1, T)``::

    p[b, s_begin, t_begin] = 0
    p[b, s, t] = logaddexp(p[b, s-1, t] + px[b, s-1, t],
                           p[b, s, t-1] + py[b, s, t-1])
    score[b] = p[b, s_end, t_end]

with out-of-range terms treated as ``-inf``; ``boundary[b] = [s_begin, t_begin, s_end, t_end]``
(default ``[0, 0, S, T]``). In RNN-T terms ``px`` holds the log-probs of emitting the next
symbol and ``py`` those of the termination (blank / next-frame) symbol.

k2 runs this as a C++/CUDA kernel. Here the node grid is skewed so that each anti-diagonal
``d = s + t`` is one contiguous row; the forward (alpha) and backward (beta) recursions run
together in one Python loop of ``S + T`` steps (beta on reversed diagonals with a reversed
``s`` axis reads its neighbours exactly like alpha), each step three vectorized ops over
``(2, S+1, B)``. Like k2, the gradient is not taken through the loop by autograd: it is the
occupation probability of each arc, ``exp(alpha + arc + beta - score)``, computed once from
alpha and beta, and the autograd backward just scales it by the incoming gradient. ``-inf`` arcs
get exactly zero gradient,
and a sequence with no valid path (score ``-inf``) gets zero gradients instead of NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mutual_information_recursion"]


def _check_boundary(boundary: Tensor, B: int, S: int, T: int) -> None:
    if boundary.shape != (B, 4):
        raise ValueError(f"boundary must have shape ({B}, 4), got {tuple(boundary.shape)}")
    if boundary.dtype != torch.int64:
        raise ValueError(f"boundary must be int64, got {boundary.dtype}")
    sb, tb, se, te = boundary.unbind(1)
    ok = (0 <= sb) & (sb <= se) & (se <= S) & (0 <= tb) & (tb <= te) & (te <= T)
    if not bool(ok.all()):
        bad = int((~ok).nonzero()[0, 0])
        raise ValueError(
            f"boundary[{bad}] = {boundary[bad].tolist()} violates "
            f"0 <= s_begin <= s_end <= {S} and 0 <= t_begin <= t_end <= {T}"
        )


def _arc_index(S: int, T: int, two_pass: bool, device: torch.device) -> Tensor:
    """Rows of the ``(M, B)`` arc table (``px`` flattened, then ``py``, then one ``-inf``) that
    feed each loop step: ``(2, D-1, P, S+1)``, ``[0]`` the arc from cell ``j-1``, ``[1]`` the
    arc from cell ``j`` of the previous step. Pass 0 is alpha on diagonal ``k`` (cell ``j`` is
    ``s = j``); pass 1 is beta on diagonal ``D-1-k`` with ``s = S - j``."""
    D = S + T + 1
    off_y, pad = S * (T + 1), S * (T + 1) + (S + 1) * T
    k = torch.arange(1, D, device=device).unsqueeze(1)  # (D-1, 1)
    j = torch.arange(S + 1, device=device).unsqueeze(0)  # (1, S+1)

    def px_row(s: Tensor, t: Tensor) -> Tensor:
        ok = (s >= 0) & (s < S) & (t >= 0) & (t <= T)
        return torch.where(ok, s * (T + 1) + t, pad)

    def py_row(s: Tensor, t: Tensor) -> Tensor:
        ok = (t >= 0) & (t < T)
        return torch.where(ok, off_y + s * T + t, pad)

    # alpha(j, k) = logaddexp(alpha(j-1, k-1) + px[j-1, k-j], alpha(j, k-1) + py[j, k-1-j])
    x_rows = [px_row(j - 1, k - j)]
    y_rows = [py_row(j, k - 1 - j)]
    if two_pass:
        # beta(s, d) = logaddexp(px[s, d-s] + beta(s+1, d+1), py[s, d-s] + beta(s, d+1))
        s, d = S - j, D - 1 - k
        x_rows.append(px_row(s, d - s))
        y_rows.append(py_row(s, d - s))
    return torch.stack([torch.stack(x_rows, 1), torch.stack(y_rows, 1)])


def _run_passes(xy: Tensor, B: int, inject: Tensor, inject_step: list[int]) -> Tensor:
    """The loop. ``xy``: ``(2, K-1, N)`` arc scores per step, ``N = P * W * B`` with the batch
    innermost, ``xy[0]`` from cell ``j-1`` (so ``j = 0`` must be ``-inf``), ``xy[1]`` from cell
    ``j``. ``inject``: flat positions set to 0 (path starts), ``inject_step`` their steps.
    Returns ``(K, N + B)`` log-scores; the first ``B`` columns are a pad.

    Each step is one contiguous row, cell ``j-1`` is the same row shifted by ``B`` elements
    (for ``j = 0`` that is the previous pass's last cell or the pad, harmless because its arc
    is ``-inf``), so one step is three vectorized ops.
    """
    _, Km1, N = xy.shape
    buf = xy.new_full((Km1 + 1, N + B), float("-inf"))
    lo = buf[:, :-B].unbind(0)  # cell j-1
    hi = buf[:, B:].unbind(0)  # cell j
    xl, yl = xy[0].unbind(0), xy[1].unbind(0)
    t1 = xy.new_empty(N)
    t2 = xy.new_empty(N)
    steps: dict[int, Tensor] = {}
    for k in sorted(set(inject_step)):
        steps[k] = inject[[i for i, v in enumerate(inject_step) if v == k]]
    if 0 in steps:
        buf[0, steps[0]] = 0.0
    for k in range(1, Km1 + 1):
        torch.add(lo[k - 1], xl[k - 1], out=t1)
        torch.add(hi[k - 1], yl[k - 1], out=t2)
        torch.logaddexp(t1, t2, out=hi[k])
        if k in steps:
            buf[k, steps[k]] = 0.0
    return buf


def _exp_flush(v: Tensor, floor: float = -80.0) -> Tensor:
    """``exp(v)`` with results below ``exp(floor)`` (~2e-35) set to 0, in place on ``v``.
    Many cells are far below that; letting exp produce denormals made it ~100x slower."""
    small = v < floor
    return v.clamp_(min=floor).exp_().masked_fill_(small, 0.0)


def _mi_forward(
    px: Tensor, py: Tensor, boundary: Tensor | None, want_grad: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Scores ``(B,)`` and, if ``want_grad``, occupation grads shaped like ``px`` and ``py``."""
    B, S, T1 = px.shape
    T = T1 - 1
    D = S + T + 1  # anti-diagonals d = s + t, one loop step each
    W = S + 1  # cells per diagonal (s = 0..S; cells off the grid stay -inf)
    P = 2 if want_grad else 1
    dev = px.device
    if boundary is None:
        s_begin = torch.zeros(B, dtype=torch.int64, device=dev)
        t_begin = s_begin
        s_end = torch.full((B,), S, dtype=torch.int64, device=dev)
        t_end = torch.full((B,), T, dtype=torch.int64, device=dev)
    else:
        s_begin, t_begin, s_end, t_end = boundary.to(dev).unbind(1)

    # (M, B) table of every arc score plus one -inf row; one index_select lays it out per step.
    table = torch.cat(
        [px.reshape(B, -1).T, py.reshape(B, -1).T, px.new_full((1, B), float("-inf"))]
    )
    rows = _arc_index(S, T, want_grad, dev).reshape(-1)
    xy = table.index_select(0, rows).view(2, D - 1, P * W * B)

    # Path starts: alpha at (s_begin, t_begin); beta at (s_end, t_end) (its cell j = S - s).
    bidx = torch.arange(B, device=dev)
    inject = [B + s_begin * B + bidx]
    inject_step = (s_begin + t_begin).tolist()
    if want_grad:
        inject.append(B + (W + S - s_end) * B + bidx)
        inject_step += (D - 1 - (s_end + t_end)).tolist()
    buf = _run_passes(xy, B, torch.cat(inject), inject_step)  # (D, (P*W + 1) * B)

    cells = buf.view(D * (P * W + 1), B)  # row k * (P*W + 1) + 1 + p * W + j
    scores = cells[(s_end + t_end) * (P * W + 1) + 1 + s_end, bidx]
    if not want_grad:
        return scores, None, None

    # alpha and beta on the natural (s, t) grid, batch last: (2, S+1, T+1, B).
    s = torch.arange(W, device=dev).unsqueeze(1)
    t = torch.arange(T1, device=dev).unsqueeze(0)
    a_rows = (s + t) * (P * W + 1) + 1 + s
    b_rows = (D - 1 - (s + t)) * (P * W + 1) + 1 + W + (S - s)
    nat = cells.index_select(0, torch.stack([a_rows, b_rows]).reshape(-1)).view(2, W, T1, B)
    # Where no path exists (score -inf) every alpha + beta is -inf: subtract 0 to get zeros.
    alpha = nat[0] - torch.where(torch.isfinite(scores), scores, torch.zeros_like(scores))
    beta = nat[1]
    px_grad = _exp_flush(alpha[:S] + px.permute(1, 2, 0) + beta[1:])  # arc (s,t)->(s+1,t)
    py_grad = _exp_flush(alpha[:, :T] + py.permute(1, 2, 0) + beta[:, 1:])  # (s,t)->(s,t+1)
    return scores, px_grad.permute(2, 0, 1).contiguous(), py_grad.permute(2, 0, 1).contiguous()


class _MutualInformation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, px: Tensor, py: Tensor, boundary: Tensor | None, want_grad: bool):
        scores, px_grad, py_grad = _mi_forward(px.detach(), py.detach(), boundary, want_grad)
        ctx.save_for_backward(px_grad, py_grad)
        ctx.set_materialize_grads(False)
        if px_grad is not None:
            ctx.mark_non_differentiable(px_grad, py_grad)
        return scores, px_grad, py_grad

    @staticmethod
    def backward(ctx, scores_grad: Tensor | None, _g1, _g2):
        px_grad, py_grad = ctx.saved_tensors
        if scores_grad is None:
            return None, None, None, None
        g = scores_grad.view(-1, 1, 1)
        return px_grad * g, py_grad * g, None, None


def mutual_information_recursion(
    px: Tensor,
    py: Tensor,
    boundary: Tensor | None = None,
    return_grad: bool = False,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """Total log-score of all monotonic paths through the ``(S+1, T+1)`` grid (k2's API).

    Args:
        px: ``(B, S, T+1)`` log-scores of the arcs ``(s, t) -> (s+1, t)``.
        py: ``(B, S+1, T)`` log-scores of the arcs ``(s, t) -> (s, t+1)``, same dtype as px.
        boundary: optional int64 ``(B, 4)`` rows ``[s_begin, t_begin, s_end, t_end]`` with
            ``0 <= s_begin <= s_end <= S`` and ``0 <= t_begin <= t_end <= T``; default
            ``[0, 0, S, T]``. Entries of px/py outside a sequence's box do not affect its
            score or gradients, but no entry may be NaN or ``+inf`` (padding included).
        return_grad: also return ``(px_grad, py_grad)``, the gradient of ``scores.sum()``
            w.r.t. px and py, i.e. the occupation probability of every arc (what
            :func:`asrq.losses.rnnt.get_rnnt_prune_ranges` consumes). Not differentiable.

    Returns:
        ``scores`` of shape ``(B,)`` (``p[b, s_end, t_end]``; ``-inf`` if no path has finite
        score), or ``(scores, (px_grad, py_grad))`` when ``return_grad``. ``scores`` supports
        autograd w.r.t. px and py.
    """
    if px.ndim != 3 or py.ndim != 3:
        raise ValueError(f"px and py must be 3-D, got {tuple(px.shape)} and {tuple(py.shape)}")
    B, S, T1 = px.shape
    T = T1 - 1
    if T < 0 or tuple(py.shape) != (B, S + 1, T):
        raise ValueError(
            f"px {tuple(px.shape)} needs py of shape ({B}, {S + 1}, {T}), got {tuple(py.shape)}"
        )
    if px.dtype != py.dtype or not px.is_floating_point():
        raise ValueError(f"px and py must share a floating dtype, got {px.dtype} and {py.dtype}")
    if boundary is not None:
        _check_boundary(boundary, B, S, T)
    needs_grad = torch.is_grad_enabled() and (px.requires_grad or py.requires_grad)
    scores, px_grad, py_grad = _MutualInformation.apply(px, py, boundary, return_grad or needs_grad)
    if return_grad:
        return scores, (px_grad, py_grad)
    return scores
