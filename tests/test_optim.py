"""ScaledAdam and Eden (asrq/train/optim.py): convergence, the RMS-scaled update, clipping,
non-finite skipping, exact resume, and the Eden formula."""

from __future__ import annotations

import io
import logging
import math

import pytest
import torch
from torch import nn

from asrq.config import OptimConfig
from asrq.train.optim import Eden, ScaledAdam, build_optimizer
from asrq.utils.io import AsrqError


@pytest.fixture(autouse=True)
def _one_thread():
    """The tensors here are tiny: one thread avoids OpenMP contention on a busy 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _regression_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 16, generator=g)
    w = torch.randn(16, 4, generator=g)
    y = torch.tanh(x @ w) + 0.05 * torch.randn(256, 4, generator=g)
    return x, y


def _mlp(seed: int = 100) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4)
    )


def _train(model: nn.Module, opt: torch.optim.Optimizer, x, y, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("seed", [0, 1])
def test_scaled_adam_trains_mlp_as_fast_as_adam(seed: int) -> None:
    x, y = _regression_data(seed)
    final = {}
    for name in ["adam", "scaled_adam"]:
        model = _mlp(seed + 100)
        if name == "adam":
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        else:
            opt = ScaledAdam(model.named_parameters(), lr=0.045)
        losses = _train(model, opt, x, y, 50)
        final[name] = ((model(x) - y) ** 2).mean().item()
        assert final[name] < 0.5 * losses[0], (name, losses[0], final[name])
    assert final["scaled_adam"] <= 1.1 * final["adam"], final


def test_update_size_is_proportional_to_param_rms() -> None:
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(8, 16) * 0.05)
    b = nn.Parameter(a.detach() * 10.0)  # same direction, 10x the RMS
    s = nn.Parameter(torch.tensor([0.3]))  # a scalar: plain Adam at lr * scalar_lr_scale
    lr, beta1, scalar_lr_scale = 0.04, 0.9, 0.1
    opt = ScaledAdam([a, b, s], lr=lr, scalar_lr_scale=scalar_lr_scale, clipping_scale=None)
    g = torch.randn(8, 16)
    a.grad, b.grad, s.grad = g.clone(), g.clone(), torch.tensor([-2.0])
    before = [t.detach().clone() for t in (a, b, s)]
    opt.step()
    da, db, ds = (t.detach() - t0 for t, t0 in zip((a, b, s), before, strict=True))
    torch.testing.assert_close(db, 10.0 * da, rtol=1e-4, atol=0)  # float32 p_new - p_old
    # First step by hand: v = (1 - beta2) g^2 and bc2 = 1 - beta2, so g / sqrt(v / bc2) = sign(g):
    # update = -lr * (1 - beta1) * rms(p) * sign(g).
    rms_a = before[0].pow(2).mean().sqrt()
    torch.testing.assert_close(da, -lr * (1 - beta1) * rms_a * g.sign(), rtol=1e-4, atol=0)
    torch.testing.assert_close(
        ds, torch.tensor([lr * scalar_lr_scale * (1 - beta1)]), rtol=1e-4, atol=0
    )


def test_scale_update_shrinks_a_parameter_whose_gradient_says_so() -> None:
    """loss = 0.5 |p|^2 (g = p): the learned scale (lr * scalar_lr_scale) shrinks p on top of
    the direction update; with a negligible scalar_lr_scale only the direction update acts."""
    rms_after = {}
    for scalar_lr_scale in [0.1, 1e-9]:
        torch.manual_seed(0)
        p = nn.Parameter(torch.randn(32, 32))
        opt = ScaledAdam([p], lr=0.04, scalar_lr_scale=scalar_lr_scale, clipping_scale=None)
        for _ in range(40):
            p.grad = p.detach().clone()
            opt.step()
        rms_after[scalar_lr_scale] = p.detach().pow(2).mean().sqrt().item()
    assert rms_after[0.1] < 0.95 * rms_after[1e-9] < 0.95, rms_after


def _grads_for_step(model: nn.Module, step: int, mult: float = 1.0) -> None:
    g = torch.Generator().manual_seed(1000 + step)
    for p in model.parameters():
        p.grad = mult * torch.randn(p.shape, generator=g)


def test_clipping_against_median_gradient_norm(caplog: pytest.LogCaptureFixture) -> None:
    model = _mlp()
    opt = ScaledAdam(model.named_parameters(), lr=0.02, clipping_scale=2.0)
    for step in range(30):
        _grads_for_step(model, step)
        opt.step()
    first = opt.param_groups[0]["params"][0]
    threshold = opt.state[first]["clip_threshold"]  # set at step 20: 2 * clipping_scale * median
    norms = opt.state[first]["clip_norms"][:21]
    assert threshold == pytest.approx(4.0 * sorted(norms)[10])

    # A control optimizer with the same state and no clipping, fed the gradient clipped by hand.
    control_model = _mlp()
    control_model.load_state_dict(model.state_dict())
    control = ScaledAdam(control_model.named_parameters(), lr=0.02)
    control.load_state_dict(opt.state_dict())
    control.param_groups[0]["clipping_scale"] = None

    _grads_for_step(model, 30, mult=100.0)
    tot_sumsq = sum(
        (max(opt.state[p]["param_rms"], 1e-5) * p.grad.norm()) ** 2 for p in model.parameters()
    )
    factor = threshold / tot_sumsq.sqrt().item()
    assert factor < 0.1  # 100x the typical gradient
    for p, q in zip(model.parameters(), control_model.parameters(), strict=True):
        q.grad = p.grad * factor
    with caplog.at_level(logging.WARNING, logger="asrq.train.optim"):
        opt.step()
    control.step()
    for p, q in zip(model.parameters(), control_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    messages = [r.getMessage() for r in caplog.records]
    assert any("scaling gradients by" in m and "dominant parameter 2.weight" in m for m in messages)

    # An ordinary gradient is not clipped: both optimizers stay identical.
    _grads_for_step(model, 31)
    _grads_for_step(control_model, 31)
    opt.step()
    control.step()
    for p, q in zip(model.parameters(), control_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_non_finite_gradient_skips_the_step(bad: float, caplog: pytest.LogCaptureFixture) -> None:
    model = _mlp()
    opt = ScaledAdam(model.named_parameters())
    for step in range(12):
        _grads_for_step(model, step)
        opt.step()
    params_before = [p.detach().clone() for p in model.parameters()]
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    _grads_for_step(model, 12)
    model[2].weight.grad[3, 5] = bad
    with caplog.at_level(logging.WARNING, logger="asrq.train.optim"):
        opt.step()
    messages = [r.getMessage() for r in caplog.records]
    assert any("non-finite gradient" in m and "2.weight" in m for m in messages)
    for p, p0 in zip(model.parameters(), params_before, strict=True):
        assert torch.equal(p, p0)
    saved = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    now = opt.state_dict()
    for k, st in saved["state"].items():
        for key, v in st.items():
            if key == "clip_nonfinite_in_a_row":
                continue
            got = now["state"][k][key]
            assert torch.equal(v, got) if torch.is_tensor(v) else v == got, key
    _grads_for_step(model, 13)
    opt.step()  # training goes on
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_many_non_finite_steps_in_a_row_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ScaledAdam, "MAX_CONSECUTIVE_NONFINITE", 3)
    p = nn.Parameter(torch.randn(4, 4))
    opt = ScaledAdam([p])
    p.grad = torch.full((4, 4), math.inf)
    opt.step()
    opt.step()
    with pytest.raises(RuntimeError, match="3 consecutive steps"):
        opt.step()


def test_state_dict_round_trip_reproduces_next_steps_exactly() -> None:
    x, y = _regression_data(3)
    model = _mlp()
    model.register_parameter("gain", nn.Parameter(torch.tensor([1.0])))  # a scalar parameter
    opt = ScaledAdam(model.named_parameters(), lr=0.045)
    sched = Eden(opt, lr_batches=20, lr_epochs=2, warmup_batches=10)

    def run(m: nn.Module, o: ScaledAdam, s: Eden, start: int, n: int) -> list[list[torch.Tensor]]:
        trace = []
        for step in range(start, start + n):
            s.step_epoch(step / 15)
            loss = ((m(x[step % 4 :: 4]) * m.gain - y[step % 4 :: 4]) ** 2).mean()
            o.zero_grad()
            loss.backward()
            o.step()
            s.step_batch()
            trace.append([p.detach().clone() for p in m.parameters()])
        return trace

    run(model, opt, sched, 0, 25)  # past the step-10/20 clipping estimates and size updates
    buf = io.BytesIO()
    ckpt = {"model": model.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict()}
    torch.save(ckpt, buf)
    expected = run(model, opt, sched, 25, 20)  # covers the step-40 estimate

    ckpt = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)  # plain data only
    model2 = _mlp(seed=7)
    model2.register_parameter("gain", nn.Parameter(torch.tensor([0.0])))
    model2.load_state_dict(ckpt["model"])
    opt2 = ScaledAdam(model2.named_parameters(), lr=0.045)
    sched2 = Eden(opt2, lr_batches=20, lr_epochs=2, warmup_batches=10)
    sched2.load_state_dict(ckpt["sched"])
    opt2.load_state_dict(ckpt["optim"])
    got = run(model2, opt2, sched2, 25, 20)
    for step, (want, have) in enumerate(zip(expected, got, strict=True)):
        for w, h in zip(want, have, strict=True):
            assert torch.equal(w, h), f"step {25 + step} differs after resume"

    # In-memory loading does not share state tensors with the source optimizer.
    opt3 = ScaledAdam(model2.named_parameters())
    opt3.load_state_dict(opt.state_dict())
    ptr = opt.state_dict()["state"][0]["delta"].data_ptr()
    assert opt3.state_dict()["state"][0]["delta"].data_ptr() != ptr


def test_eden_matches_formula_by_hand() -> None:
    p = nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.SGD([p], lr=0.04)
    sched = Eden(opt, lr_batches=5000, lr_epochs=6, warmup_batches=300, warmup_start=0.5)
    assert sched.get_last_lr() == [pytest.approx(0.04 * 0.5)]  # batch 0: warmup_start
    cases = [
        # batch, epoch, expected lr written out by hand
        (150, 0, 0.04 * (1 + 150**2 / 5000**2) ** -0.25 * 0.75),
        (300, 0, 0.04 * (1 + 300**2 / 5000**2) ** -0.25),
        (5000, 6, 0.04 * 2**-0.25 * 2**-0.25),
        (1000, 2, 0.04 * 1.04**-0.25 * (40 / 36) ** -0.25),
        (20000, 2.5, 0.04 * 17**-0.25 * ((6.25 + 36) / 36) ** -0.25),  # fractional epoch
    ]
    for batch, epoch, want in cases:
        sched.step_batch(batch)
        sched.step_epoch(epoch)
        assert sched.get_last_lr() == [pytest.approx(want, rel=1e-12)]
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12)
    sched.step_batch()
    sched.step_epoch()
    assert (sched.batch, sched.epoch) == (20001, 3.5)

    state = sched.state_dict()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.04)
    sched2 = Eden(opt2, lr_batches=5000, lr_epochs=6, warmup_batches=300)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr() == [opt2.param_groups[0]["lr"]]


def test_build_optimizer() -> None:
    model = _mlp()
    model[0].bias.requires_grad_(False)
    opt, sched = build_optimizer(model, OptimConfig(lr=0.03, warmup_start=0.5))
    assert isinstance(opt, ScaledAdam) and isinstance(sched, Eden)
    assert "2.weight" in opt.parameters_names[0] and "0.bias" not in opt.parameters_names[0]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.015)
    assert opt.param_groups[0]["clipping_scale"] == 2.0

    opt, sched = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3, weight_decay=0.01))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.01
    x, y = _regression_data()
    losses = []
    for _ in range(3):
        losses += _train(model, opt, x, y, 1)
        sched.step_batch()
    assert losses[-1] < losses[0]

    with pytest.raises(AsrqError, match="weight_decay"):
        build_optimizer(model, OptimConfig(weight_decay=0.01))


def test_parameters_without_grad_are_left_alone() -> None:
    model = _mlp()
    frozen = model[4].weight
    before = frozen.detach().clone()
    opt = ScaledAdam(model.parameters())
    for step in range(5):
        _grads_for_step(model, step)
        frozen.grad = None
        opt.step()
    assert torch.equal(frozen, before)
    assert "step" not in opt.state[frozen]
    assert opt.state[model[0].weight]["step"] == 5
