"""Fake quantization (asrq.quant): exact numerics against explicit quantize-dequantize, LSQ's
step-size gradient by hand, the noise schedule, SQuAT's alternation, a tiny model that learns."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import torchao.quantization.pt2e.quantize_pt2e  # noqa: E402,F401  (registers quantized_decomposed ops)
from torch import nn

from asrq.config import from_dict
from asrq.models import build_model
from asrq.quant import QatConfig, QuantConfig, quantize_, set_qat_step, split_parameters
from asrq.quant.fake_quant import ActFakeQuant, WeightFakeQuant, grad_scale, noise_amplitude
from asrq.quant.modules import QuantConv1d, QuantLinear, calibrating, strip_fake_quant
from asrq.quant.squat import squat_step
from asrq.testing.models import tiny_config
from asrq.train.loop import combine_losses
from asrq.utils.io import AsrqError

qd = torch.ops.quantized_decomposed


def _explicit_act(x: torch.Tensor, a: ActFakeQuant) -> torch.Tensor:
    s, z = float(a.effective_scale()), int(a.zero_point.item())
    q = qd.quantize_per_tensor(x, s, z, -128, 127, torch.int8)
    return qd.dequantize_per_tensor(q, s, z, -128, 127, torch.int8)


def _explicit_weight(w: torch.Tensor, wfq: WeightFakeQuant) -> torch.Tensor:
    s = wfq.effective_scale()
    if wfq.group_size:  # per group of G input channels
        rows = w.reshape(w.shape[0], s.shape[1], -1)
        q = torch.clamp(torch.round(rows / s[..., None]), -wfq.qmax, wfq.qmax)
        return (q * s[..., None]).reshape(w.shape)
    zp = torch.zeros(w.shape[0], dtype=torch.int64)
    q = qd.quantize_per_channel(w, s[:, 0], zp, 0, -wfq.qmax, wfq.qmax, torch.int8)
    return qd.dequantize_per_channel(q, s[:, 0], zp, 0, -wfq.qmax, wfq.qmax, torch.int8)


def _explicit_bias(layer: nn.Module) -> torch.Tensor:
    """The bias as XNNPACK / onnxruntime add it: int32 levels of input x weight scale (float
    for grouped int4 weights, which have no static input quantizer's scale to build it)."""
    if layer.weight_fq.group_size or layer.input_fq is None:
        return layer.bias
    s = (layer.input_fq.effective_scale() * layer.weight_fq.effective_scale()).reshape(-1)
    q = torch.round(layer.bias / s)
    assert q.abs().max() < 2**31  # int32 levels
    return q * s


@pytest.mark.parametrize("dtype,qmax", [("int8", 0), ("int8", 63), ("int4", 0)])
def test_fake_quant_linear_equals_explicit_quantize_dequantize(dtype: str, qmax: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.SiLU(), nn.Linear(48 if dtype == "int8" else 64, 8))
    if dtype == "int4":
        model = nn.Sequential(nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 8))
    quantize_(model, QuantConfig(weight_dtype=dtype, weight_qmax=qmax, overrides=[]))
    x = torch.randn(4, 10, 64) * 2 + 0.5
    with calibrating(model):
        model(x)
    model.eval()
    lin = model[0]
    assert isinstance(lin, QuantLinear)
    assert lin.weight_fq.qmax == (qmax or (127 if dtype == "int8" else 7))
    expect = F.linear(
        _explicit_act(x, lin.input_fq),
        _explicit_weight(lin.weight, lin.weight_fq),
        _explicit_bias(lin),
    )
    expect = _explicit_act(expect, lin.output_fq)
    torch.testing.assert_close(lin(x), expect, rtol=0, atol=1e-6)
    # levels really are the grid: weight / scale are integers within +-qmax
    w_hat = lin.weight_fq(lin.weight)
    s = lin.weight_fq.effective_scale()
    levels = w_hat.reshape(w_hat.shape[0], s.shape[1], -1) / s[..., None]
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
    assert levels.abs().max() <= lin.weight_fq.qmax + 1e-4


def test_fake_quant_depthwise_conv_equals_explicit() -> None:
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv1d(16, 16, 5, groups=16))
    quantize_(conv, QuantConfig(overrides=[]))
    x = torch.randn(2, 16, 30)
    with calibrating(conv):
        conv(x)
    c = conv[0]
    assert isinstance(c, QuantConv1d) and c.weight_fq.scale.shape == (16, 1)
    expect = F.conv1d(
        _explicit_act(x, c.input_fq),
        _explicit_weight(c.weight, c.weight_fq),
        _explicit_bias(c),
        groups=16,
    )
    expect = _explicit_act(expect, c.output_fq)
    torch.testing.assert_close(c(x), expect, rtol=0, atol=1e-6)


def test_grad_scale_is_the_identity_bit_for_bit_and_scales_the_gradient() -> None:
    """The step size the forward uses is the one export writes: no ulp from ``x - x*g + x*g``."""
    x = (torch.rand(10000) * 0.01 + 1e-4).requires_grad_()
    g = 1.0 / math.sqrt(144 * 127)
    y = grad_scale(x, g)
    assert torch.equal(y, x.detach())
    assert not torch.equal((x - x * g).detach() + x * g, x.detach())  # what it replaced was not
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, g))


def test_lsq_step_size_gradient_by_hand() -> None:
    w = torch.tensor([[0.3, -1.2, 0.06, 0.5]], requires_grad=True)
    wfq = WeightFakeQuant(w, qmax=7)
    with torch.no_grad():
        wfq.scale.fill_(0.1)
    wfq(w).sum().backward()
    # w/s = 3, -12 (clamped to -7), 0.6 (-> 1), 5: dQ/ds = 0, -7, 1 - 0.6, 0;
    # LSQ's g = 1/sqrt(4 * 7)
    expect = (-7 + 0.4) / math.sqrt(4 * 7)
    assert wfq.scale.grad.item() == pytest.approx(expect, rel=1e-5)
    torch.testing.assert_close(w.grad, torch.tensor([[1.0, 0.0, 1.0, 1.0]]))

    a = ActFakeQuant()
    with torch.no_grad():
        a.scale.fill_(0.5)
        a.zero_point.fill_(-100.0)
    a.initialized.fill_(True)
    x = torch.tensor([0.26, 200.0, -20.0], requires_grad=True)
    a(x).sum().backward()
    # x/s + z = -99.48 (-> round 0.52 -> 1 - 0.52), 300 (clamped at 127 -> 127 - z),
    # -140 (clamped at -128 -> -128 - z)
    expect = ((1 - 0.52) + (127 + 100) + (-128 + 100)) / math.sqrt(3 * 127)
    assert a.scale.grad.item() == pytest.approx(expect, rel=1e-5)
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 0.0, 0.0]))


def test_noise_amplitude_decays_on_schedule() -> None:
    assert noise_amplitude(0, 0.8, 100) == pytest.approx(0.8)
    assert noise_amplitude(100, 0.8, 100) == pytest.approx(0.8 / math.e)
    assert noise_amplitude(300, 0.8, 100) == pytest.approx(0.8 * math.exp(-3))
    torch.manual_seed(0)
    a = ActFakeQuant("noise", noise_init=0.8, noise_decay_steps=100)
    x = torch.randn(20000) * 3
    a.eval()
    q = a(x)  # first call initialises; eval: the true quantizer
    err = (q - x).abs()
    a.train()
    for step in (0, 100, 300):
        set_qat_step(a, step)
        noisy = a(x)
        ratio = ((noisy - q).abs() / err.clamp(min=1e-6))[err > 1e-3]
        amp = noise_amplitude(step, 0.8, 100)
        assert ratio.max() <= amp * (1 + 1e-3) + 1e-4
        assert ratio.max() >= 0.95 * amp  # the noise fills [-a, a] times the error
    a.eval()
    torch.testing.assert_close(a(x), q)


def test_noise_estimator_gradient_scale_gamma() -> None:
    a = ActFakeQuant("noise")
    x = torch.randn(100, requires_grad=True)
    a(x.detach())  # initialise
    with torch.no_grad():
        a.gamma.fill_(2.5)
    a.train()
    out = a(x)
    (out * 3.0).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((100,), 7.5))  # gamma x upstream, no clip mask
    assert a.gamma.grad.item() == pytest.approx(3.0 * float(x.detach().sum()), rel=1e-4, abs=1e-4)
    assert a.scale.grad is not None and a.scale.grad.abs() > 0


def test_squat_alternates_weights_and_step_sizes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 4))
    quantize_(model, QuantConfig(estimator="squat", overrides=[]))
    x, y = torch.randn(16, 32), torch.randn(16, 4)
    with calibrating(model):
        model(x)
    net, qp = split_parameters(model)
    assert {n for n, _ in qp} == {
        "0.weight_fq.scale",
        "0.input_fq.scale",
        "2.weight_fq.scale",
        "2.input_fq.scale",
        "0.output_fq.scale",
        "2.output_fq.scale",
    }
    opt = torch.optim.SGD(
        [{"params": [p for _, p in net]}, {"params": [p for _, p in qp]}], lr=0.05
    )

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    def snap(params):
        return [p.detach().clone() for _, p in params]

    for step, kind in ((0, "weights"), (1, "scales"), (2, "weights"), (3, "scales")):
        w0, s0 = snap(net), snap(qp)
        _, did = squat_step(opt, [p for _, p in net], [p for _, p in qp], closure, step, rho=0.05)
        assert did == kind
        w_changed = any(not torch.equal(a, p) for a, (_, p) in zip(w0, net, strict=True))
        s_changed = any(not torch.equal(a, p) for a, (_, p) in zip(s0, qp, strict=True))
        assert (w_changed, s_changed) == ((True, False) if kind == "weights" else (False, True))


@pytest.mark.parametrize("estimator", ["ste", "noise", "squat"])
def test_tiny_quantized_model_loss_falls(estimator: str) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = tiny_config(vocab_size=32)
    model = build_model(cfg.model)
    quantize_(model, QuantConfig(estimator=estimator))
    names = {n for n, m in model.named_modules() if isinstance(m, QuantLinear | QuantConv1d)}
    assert "encoder.layers.0.conv.dw" in names and "joiner.output_linear" in names
    assert "encoder.embed.conv.2" not in names and "simple_am_proj" not in names
    feats = torch.randn(2, 83, 80)
    lens = torch.tensor([83, 71])
    targets = torch.tensor([[3, 5, 7, 9], [4, 6, 8, -1]])
    tlens = torch.tensor([4, 3])
    loss_cfg = cfg.train.loss
    loss_cfg.rnnt_type = "full"
    with calibrating(model):
        model(feats, lens, targets, tlens, loss_cfg, -1, -1)
    net, qp = split_parameters(model)
    opt = torch.optim.AdamW(
        [{"params": [p for _, p in net]}, {"params": [p for _, p in qp], "lr": 1e-3}], lr=3e-3
    )
    model.train()

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        losses = model(feats, lens, targets, tlens, loss_cfg, -1, -1)
        loss = combine_losses(losses, 100, loss_cfg) / float(losses["frames"])
        loss.backward()
        return loss

    hist = []
    for step in range(16):
        set_qat_step(model, step)
        if estimator == "squat":
            loss, _ = squat_step(opt, [p for _, p in net], [p for _, p in qp], closure, step, 0.05)
        else:
            loss = closure()
            opt.step()
        hist.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in hist)
    assert sum(hist[-3:]) < 0.8 * sum(hist[:3]), hist


def test_int4_needs_in_features_divisible_by_group() -> None:
    model = nn.Sequential(nn.Linear(144, 64))
    with pytest.raises(
        AsrqError, match=r"'0' has in_features 144, not a multiple of group_size 32"
    ):
        quantize_(model, QuantConfig(weight_dtype="int4", overrides=[]))
    model = nn.Sequential(nn.Linear(144, 64))
    cfg = from_dict(
        QuantConfig,
        {"weight_dtype": "int4", "overrides": [{"pattern": "0", "weight_dtype": "int8"}]},
    )
    quantize_(model, cfg)
    assert model[0].weight_fq.qmax == 127 and model[0].weight_fq.scale.shape == (64, 1)


def test_int4_unaligned_pad_quantizes_a_short_last_group() -> None:
    """``int4_unaligned: pad``: a 48-wide layer has group scales (out, 2), the second over 16
    columns, and its fake-quant weight equals explicit per-group quantize-dequantize of the
    weight zero-padded to 64 columns; the export's PaddedLinear computes the same layer."""
    from asrq.quant.int4 import PaddedLinear, pad_unaligned_linears

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 8))
    quantize_(model, QuantConfig(weight_dtype="int4", int4_unaligned="pad", overrides=[]))
    wfq = model[0].weight_fq
    s = wfq.effective_scale()
    assert s.shape == (8, 2)
    padded = F.pad(model[0].weight.detach(), (0, 16)).reshape(8, 2, 32)
    explicit = torch.clamp(torch.round(padded / s[..., None]), -7, 7) * s[..., None]
    torch.testing.assert_close(
        wfq(model[0].weight), explicit.reshape(8, 64)[:, :48], rtol=0, atol=0
    )
    # the short group's scale fits its 16 columns: init from their max, not diluted by zeros
    assert torch.all(s[:, 1] <= model[0].weight[:, 32:].abs().amax(1) / 7 + 1e-7)
    # export side: the input zero-padded to a whole group gives the same output
    plain = nn.Sequential(nn.Linear(48, 8), nn.Linear(64, 8))
    ref = copy.deepcopy(plain)
    assert pad_unaligned_linears(plain, 32) == {"0": "0.linear"}
    assert isinstance(plain[0], PaddedLinear) and plain[0].linear.in_features == 64
    x = torch.randn(3, 5, 48)
    torch.testing.assert_close(plain[0](x), ref[0](x), rtol=0, atol=1e-6)


def test_configs_load_and_validate() -> None:
    q = from_dict(QatConfig, {"init": "x.pt", "quant": {"estimator": "noise", "weight_qmax": 63}})
    assert q.quant.estimator == "noise" and q.quant.weight_qmax == 63
    with pytest.raises(AsrqError, match="weight_qmax 200 exceeds 127"):
        QuantConfig(weight_qmax=200)
    with pytest.raises(AsrqError, match="multiple of 32"):
        QuantConfig(group_size=48)
    with pytest.raises(AsrqError, match="not one of"):
        from_dict(QuantConfig, {"estimator": "adam"})


def test_strip_returns_float_layers_and_learned_scales() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16))
    quantize_(model, QuantConfig(overrides=[]))
    with calibrating(model):
        model(torch.randn(5, 32))
    s = model[0].weight_fq.effective_scale().clone()
    stripped, table = strip_fake_quant(model)
    assert type(stripped[0]) is nn.Linear and set(dict(stripped.named_parameters())) == {
        "0.weight",
        "0.bias",
    }
    torch.testing.assert_close(table["0"].weight_scale, s)
    assert table["0"].act_scale is not None and -128 <= table["0"].act_zero_point <= 127
