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
``d = s + t`` is one row; the forward (alpha) and backward (beta) passes are Python loops of
``S + T`` steps, each one vectorized ``logaddexp`` over ``(B, S+1)``. Like k2, the gradient is
not taken through the loop by autograd: it is the occupation probability of each arc,
``exp(alpha + arc + beta - score)``, computed once from alpha and beta, and the autograd
backward just scales it by the incoming gradient. ``-inf`` arcs get exactly zero gradient,
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


def _skew(x: Tensor, D: int) -> Tensor:
    """Rearrange ``x`` of shape ``(B, R, L)`` (node ``(s, t)`` at ``x[:, s, t]``) into the
    diagonal-major layout ``(D, B, R)`` with ``out[s + t, :, s] = x[:, s, t]``; cells that are
    not nodes of ``x`` hold ``-inf``."""
    B, R, L = x.shape
    padded = torch.cat([x, x.new_full((B, R, 1), float("-inf"))], dim=2)  # (B, R, L+1)
    s = torch.arange(R, device=x.device).unsqueeze(1)
    d = torch.arange(D, device=x.device).unsqueeze(0)
    t = d - s  # (R, D)
    t = torch.where((t >= 0) & (t < L), t, L)
    out = torch.gather(padded, 2, t.unsqueeze(0).expand(B, R, D))  # (B, R, D)
    return out.permute(2, 0, 1).contiguous()


def _unskew(g: Tensor, R: int, L: int) -> Tensor:
    """Inverse of :func:`_skew` for the first ``R`` rows: ``(D, B, >=R)`` -> ``(B, R, L)``."""
    D, B, _ = g.shape
    g = g[:, :, :R].permute(1, 2, 0)  # (B, R, D)
    idx = torch.arange(R, device=g.device).unsqueeze(1) + torch.arange(L, device=g.device)
    return torch.gather(g, 2, idx.unsqueeze(0).expand(B, R, L))


def _injections(step: Tensor, col: Tensor) -> dict[int, tuple[Tensor, Tensor]]:
    """Group one cell per sequence by loop step: ``{step: (batch indices, cell columns)}``."""
    out: dict[int, tuple[Tensor, Tensor]] = {}
    steps = step.tolist()
    for k in sorted(set(steps)):
        bs = torch.tensor([b for b, v in enumerate(steps) if v == k], device=step.device)
        out[k] = (bs, col[bs])
    return out


def _run_passes(xx: Tensor, yy: Tensor, inject: list[dict[int, tuple[Tensor, Tensor]]]) -> Tensor:
    """Run ``P`` independent anti-diagonal recursions in one loop (P = 1: alpha; P = 2: alpha
    and beta, the latter on reversed diagonals and a reversed s axis so that both read the
    same neighbours). ``xx``, ``yy``: ``(K-1, P, B, W)`` scores of the arcs into cell ``j`` at
    step ``k`` from cell ``j-1`` (``xx``) and from cell ``j`` (``yy``) of step ``k-1``.
    ``inject[p]``: cells set to 0 (path starts) per step. Returns ``(K, P, B, W+1)``
    log-scores; column 0 is a ``-inf`` pad and column ``j+1`` holds cell ``j``."""
    Km1, P, B, W = xx.shape
    buf = xx.new_full((Km1 + 1, P, B, W + 1), float("-inf"))
    lo = buf[:, :, :, :-1].unbind(0)  # cell j-1 (column j)
    hi = buf[:, :, :, 1:].unbind(0)  # cell j (column j+1)
    xl, yl = xx.unbind(0), yy.unbind(0)
    t1 = xx.new_empty(P, B, W)
    t2 = xx.new_empty(P, B, W)

    def _inject(k: int) -> None:
        for p, table in enumerate(inject):
            cells = table.get(k)
            if cells is not None:
                buf[k, p, cells[0], cells[1] + 1] = 0.0

    _inject(0)
    for k in range(1, Km1 + 1):
        torch.add(lo[k - 1], xl[k - 1], out=t1)
        torch.add(hi[k - 1], yl[k - 1], out=t2)
        torch.logaddexp(t1, t2, out=hi[k])
        _inject(k)
    return buf


def _mi_forward(
    px: Tensor, py: Tensor, boundary: Tensor | None, want_grad: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Scores ``(B,)`` and, if ``want_grad``, occupation grads shaped like ``px`` and ``py``."""
    B, S, T1 = px.shape
    T = T1 - 1
    D = S + T + 1  # number of anti-diagonals d = s + t
    dev = px.device
    if boundary is None:
        s_begin = torch.zeros(B, dtype=torch.int64, device=dev)
        t_begin = s_begin
        s_end = torch.full((B,), S, dtype=torch.int64, device=dev)
        t_end = torch.full((B,), T, dtype=torch.int64, device=dev)
    else:
        s_begin, t_begin, s_end, t_end = boundary.to(dev).unbind(1)

    # px gets a row S of -inf so that both px and py live on the (S+1)-wide node grid.
    px_full = torch.cat([px, px.new_full((B, 1, T1), float("-inf"))], dim=1)  # (B, S+1, T+1)
    xs = _skew(px_full, D)  # (D, B, S+1): xs[d, :, s] = px[:, s, d-s], arc out of (s, d-s)
    ys = _skew(py, D)  # (D, B, S+1): ys[d, :, s] = py[:, s, d-s]
    # Alpha at (s, d-s) reads the arc from (s-1, d-s): px[:, s-1, d-s] = xs[d-1, :, s-1].
    xsh = torch.cat([xs.new_full((D, B, 1), float("-inf")), xs[:, :, :-1]], dim=2)
    alpha_x, alpha_y = xsh[:-1], ys[:-1]
    alpha_in = [_injections(s_begin + t_begin, s_begin)]
    if want_grad:
        # Beta runs from the last diagonal down; with the s axis reversed (s' = S - s) it reads
        # cells s'-1 and s' of the previous step, exactly like alpha, so both share one loop.
        xx = torch.stack([alpha_x, xs[:-1].flip(0, 2)], dim=1)  # (D-1, 2, B, S+1)
        yy = torch.stack([alpha_y, ys[:-1].flip(0, 2)], dim=1)
        inject = alpha_in + [_injections(D - 1 - (s_end + t_end), S - s_end)]
    else:
        xx, yy, inject = alpha_x.unsqueeze(1), alpha_y.unsqueeze(1), alpha_in
    buf = _run_passes(xx, yy, inject)  # (D, P, B, S+2)

    alpha = buf[:, 0, :, 1:]  # (D, B, S+1), alpha[d, :, s] = p[:, s, d-s]
    bidx = torch.arange(B, device=dev)
    scores = alpha[s_end + t_end, bidx, s_end]
    if not want_grad:
        return scores, None, None

    # beta[d, :, s]: log-sum of the paths from (s, d-s) to the end; one extra -inf diagonal
    # (d = D) and column (s = S+1) so that the successors of every cell exist.
    beta = px.new_full((D + 1, B, S + 2), float("-inf"))
    beta[:D, :, : S + 1] = buf[:, 1, :, 1:].flip(0, 2)
    # Where no path exists (score -inf) every alpha+beta is -inf: subtract 0 to get zeros.
    norm = torch.where(torch.isfinite(scores), scores, torch.zeros_like(scores)).view(1, B, 1)
    a = alpha - norm
    gx = torch.exp(a + xs + beta[1:, :, 1:])  # arc (s, t) -> (s+1, t)
    gy = torch.exp(a + ys + beta[1:, :, :-1])  # arc (s, t) -> (s, t+1)
    return scores, _unskew(gx, S, T1), _unskew(gy, S + 1, T)


class _MutualInformation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, px: Tensor, py: Tensor, boundary: Tensor | None, return_grad: bool):
        want = return_grad or px.requires_grad or py.requires_grad
        scores, px_grad, py_grad = _mi_forward(px.detach(), py.detach(), boundary, want)
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
            ``[0, 0, S, T]``. Entries of px/py outside a sequence's box are ignored.
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
        raise ValueError(f"px {tuple(px.shape)} needs py of shape ({B}, {S + 1}, {T}), got {tuple(py.shape)}")
    if px.dtype != py.dtype or not px.is_floating_point():
        raise ValueError(f"px and py must share a floating dtype, got {px.dtype} and {py.dtype}")
    if boundary is not None:
        _check_boundary(boundary, B, S, T)
    scores, px_grad, py_grad = _MutualInformation.apply(px, py, boundary, return_grad)
    if return_grad:
        return scores, (px_grad, py_grad)
    return scores
