"""The noise floor of a quantized model (asrq.quant.sensitivity): a fake-quant encoder moves
under a 1e-6 input perturbation by far more than its float twin does."""

from __future__ import annotations

import torch

from asrq.export.rnnt import program_specs
from asrq.models import build_model
from asrq.quant import QuantConfig, quantize_
from asrq.quant.modules import calibrating
from asrq.quant.sensitivity import (
    output_floor,
    parity_over_utterances,
    perturbed_fbank,
    perturbed_runner,
)
from asrq.testing.models import tiny_config


def _models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=32)
    fp = build_model(cfg.model).eval()
    q = quantize_(build_model(cfg.model).eval(), QuantConfig(weight_qmax=63))
    q.load_state_dict(fp.state_dict(), strict=False)
    spec = program_specs(q, 4, 16, "executorch")["encoder"]
    with calibrating(q), torch.no_grad():
        for _ in range(3):
            spec.module(torch.randn(1, 163, 80) * 3, torch.tensor([163]))
    return fp, q.eval()


def test_perturbed_fbank_scales_the_encoder_input_and_is_removed() -> None:
    fp, _ = _models()
    seen: list[torch.Tensor] = []
    fp.encoder.embed.register_forward_hook(lambda m, a, o: seen.append(a[0].clone()))
    x, lens = torch.randn(1, 43, 80) * 3, torch.tensor([43])
    with torch.no_grad(), perturbed_fbank(fp, 1e-3, seed=0):
        fp.encoder(x, lens)
    with torch.no_grad():
        fp.encoder(x, lens)
    rel = (seen[0] / x - 1).abs()
    assert 1e-5 < rel.mean() < 3e-3 and rel.max() < 1e-2  # |N(0,1)| * 1e-3 per element
    assert torch.equal(seen[1], x)  # the hook is gone after the block


def test_fake_quant_encoder_has_a_floor_its_float_twin_has_not() -> None:
    """Measured: at rel 1e-4 the float encoder stays ~80 dB from itself, the fake-quant one
    drops to ~36 dB (and stays there at 1e-3: a cliff, not a slope)."""
    fp, q = _models()
    speech = torch.randn(200, 80) * 3
    floors = {}
    for name, m in (("fp32", fp), ("int8", q)):
        spec = program_specs(m, 4, 16, "executorch")["encoder_streaming"]
        floors[name] = output_floor(spec, speech, rel=1e-4, seeds=(0, 1, 2))
    assert all(isinstance(v, float) and v > 70.0 for v in floors["fp32"]), floors
    assert all(isinstance(v, float) and v < 50.0 for v in floors["int8"]), floors


def test_parity_over_utterances_counts_ties_and_where_they_start() -> None:
    """A program identical to the model has no tie on any chunk; the fake-quant model fed
    inputs moved by 1e-4 (a runtime with other float rounding, exaggerated) ties on some
    chunks, and the report says on which utterances and after how many chunks."""
    _, q = _models()
    spec = program_specs(q, 4, 16, "executorch")["encoder_streaming"]
    g = torch.Generator().manual_seed(0)
    utts = [(f"u{i}", torch.randn(int(n), 80, generator=g) * 3) for i, n in enumerate((90, 161))]

    def same(_name: str, inputs: tuple) -> list:
        with torch.no_grad():
            return list(spec.module(*inputs))

    rep = parity_over_utterances(spec, same, "eager", utts)
    assert rep["utterances"] == 2 and rep["utterances_with_a_tie"] == 0
    assert rep["chunks_before_first_tie"] == rep["chunks"] > 2
    assert rep["chunk_db_quantiles"]["min"] == "inf" and rep["share_chunks_ge_30db"] == 1.0

    rep = parity_over_utterances(spec, perturbed_runner(spec, 1e-4, seed=1), "moved", utts)
    assert rep["utterances_with_a_tie"] >= 1
    assert rep["chunks_before_first_tie"] < rep["chunks"]
    first = [v["first_below_exact"] for v in rep["per_utterance"].values()]
    assert any(isinstance(f, int) for f in first)
    assert isinstance(rep["chunk_db_quantiles"]["min"], float)
