"""Folding attention (fold = f): attention projections and FFNs act on f sub-tokens of width
D / f; exact parameter counts, the size drop of the mini encoder, streaming == full forward for
both encoders, and export parity."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from asrq.config import EncoderConfig
from asrq.models import build_encoder
from asrq.models.conformer import (
    FeedForward,
    RotarySelfAttention,
    count_parameters,
    expand_token_mask,
    fold_tokens,
    unfold_tokens,
)
from asrq.utils.io import AsrqError

MINI = dict(num_layers=8, d_model=144, num_heads=4, ffn_dim=576, conv_kernel=15)
TINY = dict(num_layers=2, d_model=64, num_heads=2, ffn_dim=128, conv_kernel=7, dropout=0.0)


def attention_params(d: int, fold: int) -> int:
    w = d // fold  # q (W x W), kv (W x 2W), out (W x W), with biases
    return 4 * w * w + 4 * w


def ffn_params(d: int, ffn: int, fold: int) -> int:
    w, h = d // fold, ffn // fold  # w1 (W x F/f), w2 (F/f x W), biases, LayerNorm on D
    return 2 * w * h + h + w + 2 * d


@pytest.mark.parametrize("fold", [1, 2, 3])
def test_attention_and_ffn_parameter_counts(fold: int) -> None:
    d, ffn = MINI["d_model"], MINI["ffn_dim"]
    assert count_parameters(RotarySelfAttention(d, 4, 0.0, 10000.0, fold=fold)) == attention_params(
        d, fold
    )
    assert count_parameters(FeedForward(d, ffn, 0.0, fold)) == ffn_params(d, ffn, fold)
    assert (
        attention_params(144, 2) == 21024 and ffn_params(144, 576, 2) == 42120
    )  # written out once


@pytest.mark.parametrize("encoder_type", ["conformer", "stateformer"])
def test_mini_encoder_parameters_drop_at_fold_2(encoder_type: str) -> None:
    extra = {"type": encoder_type, "ssm_attention": True} if encoder_type == "stateformer" else {}
    n1 = count_parameters(build_encoder(EncoderConfig(**MINI, **extra)))
    n2 = count_parameters(build_encoder(EncoderConfig(**MINI, **extra, fold=2)))
    d, ffn, layers = MINI["d_model"], MINI["ffn_dim"], MINI["num_layers"]
    per_layer = (
        attention_params(d, 1)
        - attention_params(d, 2)
        + 2 * (ffn_params(d, ffn, 1) - ffn_params(d, ffn, 2))
    )
    assert n1 - n2 == layers * per_layer  # only the attention and the two FFNs of each block shrink
    assert (n1 - n2) / n1 >= 0.15, (n1, n2)
    if encoder_type == "conformer":
        assert (n1, n2) == (4_078_064, 1_581_680)  # -61%: the conv module and front-end stay


def test_fold_unfold_and_mask_expansion() -> None:
    x = torch.randn(2, 5, 12)
    xs = fold_tokens(x, 3)
    assert xs.shape == (2, 15, 4)
    torch.testing.assert_close(xs[:, 3 * 2 + 1], x[:, 2, 4:8])  # sub-token 1 of token 2
    torch.testing.assert_close(unfold_tokens(xs, 3), x)
    mask = torch.rand(2, 1, 5, 7) > 0.5
    ref = mask.repeat_interleave(3, dim=-1).repeat_interleave(3, dim=-2)
    assert torch.equal(expand_token_mask(mask, 3), ref)


def test_folded_ffn_is_a_block_diagonal_ffn() -> None:
    """Folding shares one (D/f x F/f) weight over the f sub-token slots: the same map as an
    unfolded FFN whose weights are block-diagonal copies of it."""
    torch.manual_seed(0)
    folded = FeedForward(12, 24, 0.0, fold=3).eval()
    plain = FeedForward(12, 24, 0.0, fold=1).eval()
    with torch.no_grad():
        plain.norm.load_state_dict(folded.norm.state_dict())
        plain.w1.weight.copy_(torch.block_diag(*[folded.w1.weight] * 3))
        plain.w1.bias.copy_(folded.w1.bias.repeat(3))
        plain.w2.weight.copy_(torch.block_diag(*[folded.w2.weight] * 3))
        plain.w2.bias.copy_(folded.w2.bias.repeat(3))
    x = torch.randn(2, 7, 12)
    # w1's block-diagonal output is grouped per slot, F/f channels each: same as the folded hidden
    torch.testing.assert_close(folded(x), plain(x), atol=1e-6, rtol=1e-6)


def _reference_folded_attention(
    attn: RotarySelfAttention, x: torch.Tensor, fold: int, base: float
) -> torch.Tensor:
    """Folding attention written out element by element, from the paper's definition and not
    from the module's helpers: token t of x (T, D) is f sub-tokens of width W = D / f at
    positions t + k / f; per head (width Dh) the query and key get the rotary rotation of each
    channel pair (i, i + Dh/2) by angle pos * base^(-2i / Dh), scores get the ALiBi bias
    -2^(-8 (h + 1) / H) * |pos_i - pos_j|; every sub-token sees every sub-token."""
    t_len, d = x.shape
    w = d // fold
    heads = attn.h
    dh = w // heads
    subs = [(t + k / fold, x[t, k * w : (k + 1) * w]) for t in range(t_len) for k in range(fold)]

    def rotate(v: torch.Tensor, p: float) -> torch.Tensor:
        out = v.clone()
        for i in range(dh // 2):
            ang = p * base ** (-2.0 * i / dh)
            a, b = v[i], v[i + dh // 2]
            out[i] = a * math.cos(ang) - b * math.sin(ang)
            out[i + dh // 2] = b * math.cos(ang) + a * math.sin(ang)
        return out

    q_w, q_b = attn.q.weight, attn.q.bias
    k_w, k_b = attn.kv.weight[:w], attn.kv.bias[:w]
    v_w, v_b = attn.kv.weight[w:], attn.kv.bias[w:]
    outs = []
    for p_i, s_i in subs:
        per_head = []
        for h in range(heads):
            sl = slice(h * dh, (h + 1) * dh)
            q = rotate((q_w @ s_i + q_b)[sl], p_i)
            slope = 2.0 ** (-8.0 * (h + 1) / heads)
            scores, values = [], []
            for p_j, s_j in subs:
                k = rotate((k_w @ s_j + k_b)[sl], p_j)
                scores.append(float(q @ k) / math.sqrt(dh) - slope * abs(p_i - p_j))
                values.append((v_w @ s_j + v_b)[sl])
            weights = torch.softmax(torch.tensor(scores), dim=0)
            per_head.append(sum(wt * v for wt, v in zip(weights, values, strict=True)))
        outs.append(attn.out.weight @ torch.cat(per_head) + attn.out.bias)
    return torch.stack(outs).reshape(t_len, d)


@pytest.mark.parametrize("fold", [1, 2])
def test_folded_attention_matches_an_element_by_element_reference(fold: int) -> None:
    """Sub-token k of token t sits at t + k / f; the module equals the written-out definition."""
    torch.manual_seed(0)
    base = 10000.0
    attn = RotarySelfAttention(8, 2, 0.0, base, fold=fold).eval()
    x = torch.randn(1, 3, 8)
    mask = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    with torch.no_grad():
        y = attn(x, mask)
        ref = _reference_folded_attention(attn, x[0], fold, base)
    torch.testing.assert_close(y[0], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("encoder_type", ["conformer", "stateformer"])
@pytest.mark.parametrize("chunk,left", [(4, 8), (2, 0)])
def test_streaming_equals_full_forward_at_fold_2(encoder_type: str, chunk: int, left: int) -> None:
    torch.manual_seed(0)
    cfg = EncoderConfig(**TINY, type=encoder_type, ssm_attention=True, fold=2)
    enc = build_encoder(cfg).eval()
    k = 5
    t = 4 * chunk * k + 3
    x = torch.randn(2, t, 80)
    lens = torch.tensor([t, t - 4 * chunk - 5])
    with torch.no_grad():
        full, full_lens = enc(x, lens, chunk_size=chunk, left_chunks=left // chunk)
        states = enc.init_states(2, left)
        assert states[0].shape == (
            2,
            2,
            2 * left,
            64,
        )  # attn_cache: sub-tokens of the last L frames
        outs = []
        for i in range(k):
            w = x[:, 4 * chunk * i : 4 * chunk * (i + 1) + 3]
            o, _, states = enc.streaming_forward(
                w, (lens - 4 * chunk * i).clamp(0, w.shape[1]), states
            )
            outs.append(o)
    stream = torch.cat(outs, dim=1)
    for b in range(2):
        n = int(full_lens[b])
        torch.testing.assert_close(stream[b, :n], full[b, :n], atol=1e-4, rtol=1e-4)


def test_fold_1_is_the_plain_model() -> None:
    """fold = 1 changes nothing: same parameters, same outputs as before folding existed."""
    torch.manual_seed(0)
    a = build_encoder(EncoderConfig(**TINY)).eval()
    torch.manual_seed(0)
    b = build_encoder(EncoderConfig(**TINY, fold=1)).eval()
    x = torch.randn(1, 43, 80)
    with torch.no_grad():
        torch.testing.assert_close(a(x, torch.tensor([43]))[0], b(x, torch.tensor([43]))[0])
    # the unfolded FFN is exactly Linear -> SiLU -> Linear on D
    ffn = a.layers[0].ff1
    h = torch.randn(1, 4, 64)
    with torch.no_grad():
        ref = ffn.w2(F.silu(ffn.w1(ffn.norm(h))))
        torch.testing.assert_close(ffn(h), ref)


def test_bad_fold_is_a_clear_error() -> None:
    with pytest.raises(AsrqError, match="must divide by encoder.fold"):
        EncoderConfig(**{**TINY, "fold": 3})
    with pytest.raises(AsrqError, match="sub-token width"):
        EncoderConfig(**{**MINI, "fold": 4})  # 144 / 4 = 36 = 4 heads x 9: odd head dim
    with pytest.raises(AsrqError, match="fold must be >= 1"):
        EncoderConfig(**{**TINY, "fold": 0})


@pytest.mark.slow
@pytest.mark.parametrize("encoder_type", ["conformer", "stateformer"])
def test_fold_2_onnx_export_parity(encoder_type: str, tmp_path: Path) -> None:
    from asrq.export.pipeline import export_loaded
    from asrq.testing.models import make_tiny_checkpoint
    from asrq.train.checkpoint import load_model

    enc = {"type": encoder_type, "ssm_attention": True, "fold": 2}
    loaded = load_model(make_tiny_checkpoint(tmp_path / "fold2.pt", encoder=enc))
    res = export_loaded(
        loaded,
        tmp_path / "model",
        onnx=True,
        executorch=False,
        programs=("encoder", "encoder_streaming"),
    )
    assert res.parity.ok and res.parity.max_abs_err("onnx") <= 1e-4
    assert {c.program for c in res.parity.checks} == {"encoder", "encoder_streaming"}
    states = {s["name"]: s for s in res.metadata["model"]["states"]}
    assert states["attn_cache"]["shape"] == [
        2,
        1,
        2 * 16,
        64,
    ]  # (layers, N, fold * left, 2D / fold)
