"""Stateformer (MH-SSM) encoder: the blockwise convolution form equals the literal convolution
and the frame-by-frame recurrence, chunk by chunk; the encoder's full forward equals its
streaming forward; a tiny stateformer RNN-T learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from asrq.config import EncoderConfig
from asrq.models import build_model
from asrq.models.stateformer import MultiHeadSSM, StateformerEncoder
from asrq.testing.data import TinyData, tiny_train_config
from asrq.testing.models import tiny_config
from asrq.utils.io import AsrqError

TINY = dict(
    type="stateformer",
    num_layers=2,
    d_model=64,
    num_heads=2,
    ffn_dim=128,
    conv_kernel=7,
    dropout=0.0,
)


def _ssm(seed: int = 0, d: int = 48, heads: int = 3, state: int = 8) -> MultiHeadSSM:
    """An MH-SSM whose parameters are moved away from their init (every head a different mix)."""
    torch.manual_seed(seed)
    m = MultiHeadSSM(d, heads, state, block=8)
    with torch.no_grad():
        m.a_log.add_(torch.randn_like(m.a_log) * 0.5)
        m.a_freq.add_(torch.randn_like(m.a_freq) * 0.1)
        m.log_dt.add_(torch.randn_like(m.log_dt) * 0.5)
        m.d_skip.normal_()
    return m.eval()


def test_blockwise_convolution_equals_the_literal_convolution_kernel() -> None:
    """y[t] = sum_k K[k] u[t-k] + D u[t], K[k] = Re(C Abar^k Bbar), then gate and output mixing."""
    m = _ssm()
    n, t = 2, 20
    x = torch.randn(n, t, 48)
    with torch.no_grad():
        y, _ = m(x)
        u, g = m.in_proj(x).chunk(2, dim=-1)
        uh = u.reshape(n, t, m.h, m.p)
        k = m.kernel(t)  # (H, T, P, P)
        ref = torch.zeros_like(uh)
        for i in range(t):
            for j in range(i + 1):
                ref[:, i] += torch.einsum("hpq,nhq->nhp", k[:, j], uh[:, i - j])
        ref = m.out((ref + m.d_skip * uh).reshape(n, t, -1) * F.silu(g))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 8, 13, 40])
def test_convolution_form_equals_recurrence_chunk_by_chunk(chunk: int) -> None:
    m = _ssm(seed=chunk)
    t = 50 if chunk == 1 else 120
    x = torch.randn(2, t, 48)
    with torch.no_grad():
        full, last = m(x)  # the convolution form, from a zero state
        ys_rec, ys_blk = [], []
        s_rec = s_blk = torch.zeros(2, m.h, m.s, 2)
        for i in range(0, t, chunk):
            y, s_rec = m(x[:, i : i + chunk], s_rec, recurrent=True)
            ys_rec.append(y)
            y, s_blk = m(x[:, i : i + chunk], s_blk)
            ys_blk.append(y)
    assert last.shape == (2, 3, 8, 2)
    for ys, s in ((ys_rec, s_rec), (ys_blk, s_blk)):
        torch.testing.assert_close(torch.cat(ys, dim=1), full, atol=1e-4, rtol=0)
        torch.testing.assert_close(s, last, atol=1e-4, rtol=0)


def test_long_sequence_is_stable() -> None:
    """2000 frames (80 s): the blockwise powers stay finite and match the recurrence."""
    m = _ssm(seed=3)
    x = torch.randn(1, 2000, 48)
    with torch.no_grad():
        y, s = m(x)
        y_rec, s_rec = m(x, recurrent=True)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_rec, atol=1e-4, rtol=0)
    torch.testing.assert_close(s, s_rec, atol=1e-4, rtol=0)


def test_heads_start_at_different_time_scales() -> None:
    m = MultiHeadSSM(64, 4, 16)
    dt = m.log_dt.detach().exp()
    assert (
        torch.all(dt[:-1] > dt[1:])
        and float(dt[0]) == pytest.approx(0.5)
        and float(dt[-1]) == pytest.approx(0.01)
    )
    la, _ = m.discretize()
    assert (la[0] < 0).all()  # |Abar| < 1: every mode decays


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("chunk,left", [(4, 8), (3, 0), (1, 4)])
def test_streaming_equals_full_forward(attention: bool, chunk: int, left: int) -> None:
    torch.manual_seed(0)
    enc = StateformerEncoder(EncoderConfig(**TINY, ssm_attention=attention)).eval()
    k = 5
    t = 4 * chunk * k + 3
    x = torch.randn(2, t, 80)
    lens = torch.tensor([t, t - 4 * chunk - 5])
    with torch.no_grad():
        full, full_lens = enc(x, lens, chunk_size=chunk, left_chunks=left // chunk)
        states = enc.init_states(2, left)
        outs = []
        for i in range(k):
            w = x[:, 4 * chunk * i : 4 * chunk * (i + 1) + 3]
            wl = (lens - 4 * chunk * i).clamp(0, w.shape[1])
            o, _, states = enc.streaming_forward(w, wl, states)
            outs.append(o)
    names = [s.name for s in enc.state_specs(2, left)]
    assert names == (["attn_cache"] if attention else []) + ["ssm_state", "conv_cache", "processed"]
    assert [tuple(s.shape) for s in states] == [s.shape for s in enc.state_specs(2, left)]
    stream = torch.cat(outs, dim=1)
    for b in range(2):
        n = int(full_lens[b])
        torch.testing.assert_close(stream[b, :n], full[b, :n], atol=1e-4, rtol=1e-4)


def test_padding_does_not_leak_into_valid_frames() -> None:
    torch.manual_seed(0)
    enc = StateformerEncoder(EncoderConfig(**TINY, ssm_attention=True)).eval()
    x = torch.randn(1, 83, 80)
    with torch.no_grad():
        a, la = enc(x, torch.tensor([83]), chunk_size=4, left_chunks=2)
        b, lb = enc(
            torch.cat([x, torch.randn(1, 40, 80) * 5], dim=1),
            torch.tensor([83]),
            chunk_size=4,
            left_chunks=2,
        )
    assert int(la[0]) == int(lb[0])
    torch.testing.assert_close(a[0, : la[0]], b[0, : lb[0]], atol=1e-5, rtol=1e-5)


def test_bad_config_is_a_clear_error() -> None:
    with pytest.raises(AsrqError, match="ssm_heads"):
        EncoderConfig(**{**TINY, "ssm_heads": 5})
    with pytest.raises(AsrqError, match="ssm_state_dim"):
        EncoderConfig(**{**TINY, "ssm_state_dim": 0})
    # without attention, num_heads need not fit the folded width
    EncoderConfig(**{**TINY, "fold": 4, "num_heads": 16})
    with pytest.raises(AsrqError, match="fold"):
        EncoderConfig(**{**TINY, "fold": 4, "num_heads": 16, "ssm_attention": True})


def test_build_model_and_checkpoint_config_round_trip(tmp_path: Path) -> None:
    from asrq.testing.models import make_tiny_checkpoint
    from asrq.train.checkpoint import load_model

    ckpt = make_tiny_checkpoint(
        tmp_path / "sf.pt", encoder={"type": "stateformer", "ssm_attention": True}
    )
    loaded = load_model(ckpt)
    assert isinstance(loaded.model.encoder, StateformerEncoder)
    assert loaded.config.model.encoder.ssm_attention is True
    model = build_model(tiny_config(32, encoder={"type": "stateformer"}).model)
    assert isinstance(model.encoder, StateformerEncoder)


def test_tiny_stateformer_loss_falls_over_20_steps(tiny_data: TinyData, tmp_path: Path) -> None:
    from asrq.train.loop import Trainer

    torch.set_num_threads(1)
    cfg = tiny_config(vocab_size=0, encoder={"type": "stateformer"})
    tiny_train_config(cfg, tiny_data, tmp_path / "exp", max_steps=20)
    Trainer(cfg, progress=False).run()
    losses = {}
    for line in (tmp_path / "exp" / "train_log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "train":
            losses[rec["step"]] = rec["loss"]
    assert len(losses) == 20
    first = sum(losses[s] for s in (1, 2, 3)) / 3
    last = sum(losses[s] for s in (18, 19, 20)) / 3
    assert last < 0.8 * first, (first, last)
