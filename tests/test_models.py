"""Model pieces: shapes, masks, streaming == masked full-context forward, presets."""

from __future__ import annotations

import pytest
import torch

from asrq.config import LossConfig
from asrq.models import PRESETS, build_model, preset_config
from asrq.models.conformer import chunk_attention_mask, count_parameters
from asrq.models.subsampling import subsampled_lengths
from asrq.models.transducer import pad_targets


def test_chunk_mask() -> None:
    m = chunk_attention_mask(6, chunk=2, left_chunks=1)
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1],
            [0, 0, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m, expected)
    assert chunk_attention_mask(4, chunk=-1, left_chunks=-1).all()


def test_subsampled_lengths_match_conv() -> None:
    model = build_model(preset_config("tiny", 32))
    for t in (7, 8, 11, 50, 103):
        x = torch.randn(1, t, 80)
        out, lens = model.encoder.embed(x, torch.tensor([t]))
        assert out.shape[1] == int(lens[0]) == int(subsampled_lengths(torch.tensor([t]))[0])


@pytest.mark.parametrize("chunk,left", [(4, 8), (2, 4), (3, 0)])
def test_streaming_equals_masked_full(chunk: int, left: int) -> None:
    torch.manual_seed(0)
    model = build_model(preset_config("tiny", 32)).eval()
    enc = model.encoder
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
    stream = torch.cat(outs, dim=1)
    for b in range(2):
        n = int(full_lens[b])
        torch.testing.assert_close(stream[b, :n], full[b, :n], atol=1e-5, rtol=1e-5)


def test_padding_does_not_leak_into_valid_frames() -> None:
    torch.manual_seed(0)
    model = build_model(preset_config("tiny", 32)).eval()
    x = torch.randn(1, 83, 80)
    with torch.no_grad():
        a, la = model.encoder(x, torch.tensor([83]), chunk_size=4, left_chunks=2)
        xp = torch.cat([x, torch.randn(1, 40, 80) * 5], dim=1)
        b, lb = model.encoder(xp, torch.tensor([83]), chunk_size=4, left_chunks=2)
    assert int(la[0]) == int(lb[0])
    torch.testing.assert_close(a[0, : la[0]], b[0, : lb[0]], atol=1e-5, rtol=1e-5)


def test_training_forward_losses_finite_and_backprop() -> None:
    torch.manual_seed(0)
    model = build_model(preset_config("tiny", 32))
    x = torch.randn(3, 120, 80)
    lens = torch.tensor([120, 100, 64])
    targets, tlens = pad_targets([[3, 4, 5, 6], [7, 8], [9]], pad=-1)
    for rnnt_type in ("pruned", "full"):
        losses = model(
            x, lens, targets, tlens, LossConfig(rnnt_type=rnnt_type), chunk_size=4, left_chunks=2
        )
        total = losses["simple"] + losses["pruned"] + losses["ctc"]
        assert torch.isfinite(total)
        model.zero_grad()
        total.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_presets_sizes() -> None:
    sizes = {name: count_parameters(build_model(preset_config(name, 256))) for name in PRESETS}
    assert sizes["tiny"] < 400_000
    assert 3_500_000 < sizes["mini"] < 5_500_000
    assert sizes["small"] > 15_000_000
