"""RNN-T losses: the recursion against a naive DP, the full/simple/pruned losses against
torchaudio's fused rnnt_loss, and the pruning ranges' invariants."""

from __future__ import annotations

import pytest
import torch

from asrq.losses import (
    do_rnnt_pruning,
    get_rnnt_prune_ranges,
    mutual_information_recursion,
    rnnt_boundary,
    rnnt_loss_full,
    rnnt_loss_pruned,
    rnnt_loss_simple,
    rnnt_loss_smoothed,
    torchaudio_rnnt_loss,
)

BLANK = 0


def _naive_recursion(px: torch.Tensor, py: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
    """k2's recursion written as the textbook double loop (autograd gives the gradients)."""
    scores = []
    for b in range(px.shape[0]):
        s0, t0, s1, t1 = boundary[b].tolist()
        p: dict[tuple[int, int], torch.Tensor] = {}
        for s in range(s0, s1 + 1):
            for t in range(t0, t1 + 1):
                if (s, t) == (s0, t0):
                    p[s, t] = px.new_zeros(())
                    continue
                terms = []
                if s > s0:
                    terms.append(p[s - 1, t] + px[b, s - 1, t])
                if t > t0:
                    terms.append(p[s, t - 1] + py[b, s, t - 1])
                p[s, t] = torch.logsumexp(torch.stack(terms), dim=0)
        scores.append(p[s1, t1])
    return torch.stack(scores)


def _batch(B: int, T_max: int, S_max: int, C: int, seed: int, zero_s: bool = True):
    """Random variable-length batch; the longest T and S are present (torchaudio needs it)."""
    g = torch.Generator().manual_seed(seed)
    t_lens = torch.randint(max(S_max, 2), T_max + 1, (B,), generator=g)
    s_lens = torch.randint(0 if zero_s else 1, S_max + 1, (B,), generator=g)
    t_lens[0], s_lens[0] = T_max, S_max
    if zero_s and B > 2:
        s_lens[-1] = 0
    symbols = torch.randint(1, C, (B, S_max), generator=g)
    symbols[torch.arange(S_max) >= s_lens.unsqueeze(1)] = 0
    return symbols, s_lens, t_lens, g


@pytest.mark.parametrize("with_boundary", [False, True])
def test_recursion_matches_naive_dp(with_boundary):
    torch.manual_seed(0)
    B, S, T = 4, 5, 7
    px = torch.randn(B, S, T + 1, dtype=torch.float64, requires_grad=True)
    py = torch.randn(B, S + 1, T, dtype=torch.float64, requires_grad=True)
    full = torch.tensor([[0, 0, S, T]] * B)
    boundary = torch.tensor([[0, 0, S, T], [0, 0, 2, 3], [1, 2, 4, 6], [0, 0, 0, 5]])
    bd = boundary if with_boundary else None
    ref = _naive_recursion(px, py, boundary if with_boundary else full)
    w = torch.randn(B, dtype=torch.float64)
    ref_g = torch.autograd.grad((ref * w).sum(), [px, py], retain_graph=True)
    occ_ref = torch.autograd.grad(ref.sum(), [px, py])

    scores, (px_grad, py_grad) = mutual_information_recursion(px, py, bd, return_grad=True)
    got_g = torch.autograd.grad((scores * w).sum(), [px, py])
    torch.testing.assert_close(scores, ref, atol=1e-10, rtol=0)
    for a, b in zip(got_g, ref_g, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    # return_grad gives the occupation probabilities d(sum of scores)/d(px, py)
    torch.testing.assert_close(px_grad, occ_ref[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(py_grad, occ_ref[1], atol=1e-10, rtol=0)


def test_recursion_handles_neg_inf_without_nan():
    torch.manual_seed(1)
    B, S, T = 3, 4, 6
    px = torch.randn(B, S, T + 1)
    py = torch.randn(B, S + 1, T)
    px[:, :, T] = float("-inf")
    px[0, 1, 2:5] = float("-inf")  # some blocked arcs, paths remain
    py[2] = float("-inf")  # no path at all for sequence 2
    px.requires_grad_()
    py.requires_grad_()
    scores = mutual_information_recursion(px, py)
    assert torch.isfinite(scores[:2]).all() and scores[2] == float("-inf")
    scores[:2].sum().backward()
    assert torch.isfinite(px.grad).all() and torch.isfinite(py.grad).all()
    assert (px.grad[0, 1, 2:5] == 0).all() and (py.grad[2] == 0).all()
    # occupation of each frame's blank arcs sums to one on every column t (one crossing)
    torch.testing.assert_close(py.grad[:2].sum(dim=1), torch.ones(2, T))


def test_recursion_rejects_bad_shapes():
    with pytest.raises(ValueError, match="py of shape"):
        mutual_information_recursion(torch.zeros(1, 2, 4), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="violates"):
        mutual_information_recursion(
            torch.zeros(1, 2, 4), torch.zeros(1, 3, 3), torch.tensor([[0, 0, 3, 3]])
        )


def test_full_loss_matches_torchaudio():
    B, T, S, C = 4, 14, 6, 9
    symbols, s_lens, t_lens, g = _batch(B, T, S, C, seed=2)
    logits = torch.randn(B, T, S + 1, C, generator=g, requires_grad=True)
    ours = rnnt_loss_full(logits, symbols, BLANK, rnnt_boundary(s_lens, t_lens), "none")
    ref = torchaudio_rnnt_loss(logits, symbols, t_lens, s_lens, BLANK, "none")
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-5)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-4, rtol=1e-4)


class _Joiner(torch.nn.Module):
    """icefall-style joiner on already projected inputs: linear(tanh(am + lm))."""

    def __init__(self, dim: int, vocab: int):
        super().__init__()
        self.out = torch.nn.Linear(dim, vocab)

    def forward(self, am: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(am + lm))


def _pruned_setup(B=4, T=16, S=6, C=11, J=12, seed=3):
    symbols, s_lens, t_lens, g = _batch(B, T, S, C, seed=seed)
    torch.manual_seed(seed)
    am = torch.randn(B, T, J, generator=g, requires_grad=True)
    lm = torch.randn(B, S + 1, J, generator=g, requires_grad=True)
    joiner = _Joiner(J, C)
    simple_am, simple_lm = torch.nn.Linear(J, C), torch.nn.Linear(J, C)
    boundary = rnnt_boundary(s_lens, t_lens)
    _, (px_grad, py_grad) = rnnt_loss_smoothed(
        simple_lm(lm), simple_am(am), symbols, BLANK, boundary=boundary, return_grad=True
    )
    return symbols, s_lens, t_lens, boundary, am, lm, joiner, px_grad, py_grad


def test_pruned_loss_with_full_range_equals_torchaudio():
    """The key check: s_range = S + 1 keeps the whole lattice, so the pruned loss and its
    gradients w.r.t. the joiner inputs must equal torchaudio's full RNN-T loss."""
    symbols, s_lens, t_lens, boundary, am, lm, joiner, px_grad, py_grad = _pruned_setup()
    S = symbols.shape[1]
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range=S + 1)
    assert ranges.shape == (am.shape[0], am.shape[1], S + 1)
    am_p, lm_p = do_rnnt_pruning(am, lm, ranges)
    pruned = rnnt_loss_pruned(joiner(am_p, lm_p), symbols, ranges, BLANK, boundary, "none")

    full_logits = joiner(am.unsqueeze(2), lm.unsqueeze(1))  # (B, T, S+1, C)
    ref = torchaudio_rnnt_loss(full_logits, symbols, t_lens, s_lens, BLANK, "none")
    torch.testing.assert_close(pruned, ref, atol=1e-4, rtol=1e-5)
    g_pruned = torch.autograd.grad(pruned.sum(), [am, lm, joiner.out.weight])
    g_ref = torch.autograd.grad(ref.sum(), [am, lm, joiner.out.weight])
    for a, b in zip(g_pruned, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("s_range", [2, 3, 4])
def test_pruned_loss_is_an_upper_bound_of_full_loss(s_range):
    symbols, s_lens, t_lens, boundary, am, lm, joiner, px_grad, py_grad = _pruned_setup(seed=4)
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range=s_range)
    am_p, lm_p = do_rnnt_pruning(am, lm, ranges)
    pruned = rnnt_loss_pruned(joiner(am_p, lm_p), symbols, ranges, BLANK, boundary, "none")
    full = rnnt_loss_full(
        joiner(am.unsqueeze(2), lm.unsqueeze(1)), symbols, BLANK, boundary, "none"
    )
    assert torch.isfinite(pruned).all()
    assert (pruned >= full - 1e-4).all()  # fewer paths, never a smaller loss
    # sequences with no symbols, or with all positions inside the window, lose nothing
    fits = s_lens < s_range
    torch.testing.assert_close(pruned[fits], full[fits], atol=1e-4, rtol=1e-5)
    pruned.sum().backward()
    assert torch.isfinite(am.grad).all() and torch.isfinite(lm.grad).all()


@pytest.mark.parametrize("s_range", [2, 3, 5, 100])
def test_prune_ranges_are_monotone_and_in_bounds(s_range):
    B, T, S, C = 5, 30, 12, 20
    symbols, s_lens, t_lens, g = _batch(B, T, S, C, seed=5)
    lm = torch.randn(B, S + 1, C, generator=g)
    am = torch.randn(B, T, C, generator=g)
    boundary = rnnt_boundary(s_lens, t_lens)
    _, (px_grad, py_grad) = rnnt_loss_simple(lm, am, symbols, BLANK, boundary, return_grad=True)
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)
    r = min(s_range, S + 1)
    assert ranges.shape == (B, T, r) and ranges.dtype == torch.int64
    start = ranges[:, :, 0]
    assert (ranges == start.unsqueeze(2) + torch.arange(r)).all()
    assert (start[:, 0] == 0).all()
    assert (start[:, 1:] >= start[:, :-1]).all()  # monotone in t
    assert (start[:, 1:] - start[:, :-1] < r).all()  # never skips a symbol
    assert (start >= 0).all() and (ranges <= S).all()
    last = ranges[torch.arange(B), t_lens - 1, -1]
    assert (last >= s_lens).all()  # the final symbol is reachable at the last real frame


def test_prune_ranges_cover_a_path_that_holds_all_the_mass():
    """If the occupation is one alignment (at most s_range - 1 symbols per frame), every node
    that alignment visits must lie inside its frame's window."""
    B, T, S, s_range = 1, 12, 7, 3
    g = torch.Generator().manual_seed(6)
    per_frame = torch.zeros(T, dtype=torch.int64)  # symbols emitted at each frame
    for _ in range(S):
        while True:
            t = int(torch.randint(0, T, (1,), generator=g))
            if per_frame[t] < s_range - 1:
                per_frame[t] += 1
                break
    px_grad, py_grad = torch.zeros(B, S, T + 1), torch.zeros(B, S + 1, T)
    visited = []
    s = 0
    for t in range(T):
        nodes = list(range(s, s + int(per_frame[t]) + 1))
        visited.append(nodes)
        for k in nodes[:-1]:
            px_grad[0, k, t] = 1.0
        s = nodes[-1]
        py_grad[0, s, t] = 1.0
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, torch.tensor([[0, 0, S, T]]), s_range)
    for t in range(T):
        assert set(visited[t]) <= set(ranges[0, t].tolist()), (t, visited[t], ranges[0, t])


def test_simple_loss_equals_full_loss_of_trivial_joiner():
    B, T, S, C = 3, 10, 5, 8
    symbols, s_lens, t_lens, g = _batch(B, T, S, C, seed=7)
    lm = torch.randn(B, S + 1, C, generator=g, dtype=torch.float64).mul(3).requires_grad_()
    am = torch.randn(B, T, C, generator=g, dtype=torch.float64).mul(3).requires_grad_()
    boundary = rnnt_boundary(s_lens, t_lens)
    simple = rnnt_loss_simple(lm, am, symbols, BLANK, boundary, "none")
    logits = am.unsqueeze(2) + lm.unsqueeze(1)
    full = rnnt_loss_full(logits, symbols, BLANK, boundary, "none")
    ta = torchaudio_rnnt_loss(logits.float(), symbols, t_lens, s_lens, BLANK, "none")
    torch.testing.assert_close(simple, full, atol=1e-9, rtol=0)
    torch.testing.assert_close(simple.float(), ta, atol=1e-4, rtol=1e-5)
    g_simple = torch.autograd.grad(simple.sum(), [lm, am])
    g_full = torch.autograd.grad(full.sum(), [lm, am])
    for a, b in zip(g_simple, g_full, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_smoothed_loss_interpolates():
    B, T, S, C = 3, 10, 5, 8
    symbols, s_lens, t_lens, g = _batch(B, T, S, C, seed=8)
    lm = torch.randn(B, S + 1, C, generator=g, dtype=torch.float64)
    am = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    bd = rnnt_boundary(s_lens, t_lens)
    simple = rnnt_loss_simple(lm, am, symbols, BLANK, bd, "none")
    plain = rnnt_loss_smoothed(lm, am, symbols, BLANK, 0.0, 0.0, bd, "none")
    torch.testing.assert_close(plain, simple, atol=1e-9, rtol=0)
    # lm_only_scale = 1: the lattice of the LM alone (arc scores from log_softmax(lm) only)
    lm_only = rnnt_loss_smoothed(lm, am, symbols, BLANK, 1.0, 0.0, bd, "none")
    lp = lm.log_softmax(-1)
    px = lp[:, :S].gather(2, symbols.unsqueeze(2)).expand(B, S, T + 1).clone()
    py = lp[:, :, BLANK].unsqueeze(2).expand(B, S + 1, T).clone()
    px[torch.arange(B), :, t_lens] = float("-inf")
    ref = -mutual_information_recursion(px, py, bd)
    torch.testing.assert_close(lm_only, ref, atol=1e-9, rtol=0)
    assert not torch.allclose(lm_only, simple)


def test_empty_symbol_sequences():
    """S = 0 for the whole batch: the lattice is one row of blanks; every piece still works."""
    B, T, C = 2, 6, 5
    g = torch.Generator().manual_seed(9)
    symbols = torch.zeros(B, 0, dtype=torch.int64)
    s_lens, t_lens = torch.zeros(B, dtype=torch.int64), torch.tensor([6, 4])
    bd = rnnt_boundary(s_lens, t_lens)
    lm = torch.randn(B, 1, C, generator=g, requires_grad=True)
    am = torch.randn(B, T, C, generator=g, requires_grad=True)
    simple, (px_grad, py_grad) = rnnt_loss_simple(lm, am, symbols, BLANK, bd, "none", True)
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, bd, s_range=5)
    assert ranges.shape == (B, T, 1) and (ranges == 0).all()
    am_p, lm_p = do_rnnt_pruning(am, lm, ranges)
    pruned = rnnt_loss_pruned(am_p + lm_p, symbols, ranges, BLANK, bd, "none")
    ref = torchaudio_rnnt_loss(
        am.unsqueeze(2) + lm.unsqueeze(1), symbols, t_lens, s_lens, BLANK, "none"
    )
    torch.testing.assert_close(simple, ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(pruned, ref, atol=1e-4, rtol=1e-5)
    (pruned.sum() + simple.sum()).backward()
    assert torch.isfinite(am.grad).all() and torch.isfinite(lm.grad).all()


def test_long_sequences_large_logits_have_finite_grads():
    B, T, S, C = 2, 120, 40, 30
    symbols, s_lens, t_lens, g = _batch(B, T, S, C, seed=10)
    lm = torch.randn(B, S + 1, C, generator=g).mul(20).requires_grad_()
    am = torch.randn(B, T, C, generator=g).mul(20).requires_grad_()
    bd = rnnt_boundary(s_lens, t_lens)
    loss, (px_grad, py_grad) = rnnt_loss_smoothed(
        lm, am, symbols, BLANK, boundary=bd, return_grad=True
    )
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(am.grad).all() and torch.isfinite(lm.grad).all()
    assert torch.isfinite(px_grad).all() and torch.isfinite(py_grad).all()


def test_reductions():
    B, T, S, C = 3, 8, 4, 6
    symbols, s_lens, t_lens, g = _batch(B, T, S, C, seed=11)
    logits = torch.randn(B, T, S + 1, C, generator=g)
    bd = rnnt_boundary(s_lens, t_lens)
    none = rnnt_loss_full(logits, symbols, BLANK, bd, "none")
    assert none.shape == (B,)
    torch.testing.assert_close(rnnt_loss_full(logits, symbols, BLANK, bd, "sum"), none.sum())
    torch.testing.assert_close(rnnt_loss_full(logits, symbols, BLANK, bd, "mean"), none.mean())
    torch.testing.assert_close(
        torchaudio_rnnt_loss(logits, symbols, t_lens, s_lens, BLANK, "mean"), none.mean()
    )
    with pytest.raises(ValueError, match="reduction"):
        rnnt_loss_full(logits, symbols, BLANK, bd, "avg")
