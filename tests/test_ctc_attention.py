"""Hybrid CTC / attention head: prefix beam search against greedy and a brute-force sum over
alignments, attention rescoring against its definition, streaming against the chunk-masked
encoder, a tiny model learning in 20 steps, and ``asrq decode`` on a ctc_attention checkpoint."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from asrq.config import ExperimentConfig, from_dict, to_dict
from asrq.decode.ctc import ctc_greedy
from asrq.decode.ctc_attention import (
    METHODS,
    CtcGreedyState,
    TorchCtcAttention,
    attention_rescoring,
    attention_scores,
    ctc_prefix_beam_search,
    ctc_prefix_beam_search_one,
    decode_batch,
    rescore,
)
from asrq.models import build_model
from asrq.models.ctc_attention import CtcAttentionModel, add_sos_eos
from asrq.testing.data import TinyData, tiny_train_config
from asrq.testing.models import make_tiny_ctc_attention_checkpoint, tiny_ctc_attention_config
from asrq.train.loop import combine_losses
from asrq.utils.io import AsrqError

CHUNK, LEFT = 4, 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model() -> CtcAttentionModel:
    torch.manual_seed(0)
    m = build_model(tiny_ctc_attention_config().model)
    assert isinstance(m, CtcAttentionModel)
    return m.eval()


def _random_log_probs(t: int, v: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(t, v, generator=g) * scale).log_softmax(dim=-1)


# --------------------------------------------------------------------------------------------
# CTC prefix beam search
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("v", [3, 5, 40])
def test_prefix_beam_1_equals_ctc_greedy(v: int):
    for seed in range(60):
        lp = _random_log_probs(25, v, seed)
        for blank in (0, v - 1):
            nbest = ctc_prefix_beam_search_one(lp, beam=1, blank=blank)
            assert len(nbest) == 1
            assert nbest[0][0] == ctc_greedy(lp[None], torch.tensor([25]), blank)[0], (seed, blank)


def _brute_force(lp: torch.Tensor, blank: int) -> dict[tuple[int, ...], float]:
    """log sum over every alignment of T frames, grouped by the label sequence it collapses to."""
    t, v = lp.shape
    scores: dict[tuple[int, ...], list[float]] = {}
    for path in itertools.product(range(v), repeat=t):
        seq, prev = [], None
        for s in path:
            if s != blank and s != prev:
                seq.append(s)
            prev = s
        scores.setdefault(tuple(seq), []).append(sum(float(lp[i, s]) for i, s in enumerate(path)))
    return {
        k: float(torch.logsumexp(torch.tensor(v, dtype=torch.float64), 0))
        for k, v in scores.items()
    }


@pytest.mark.parametrize("seed", range(4))
def test_prefix_beam_scores_equal_the_sum_over_alignments(seed: int):
    t, v = 5, 3
    lp = _random_log_probs(t, v, seed, scale=1.5)
    for blank in (0, 2):
        exact = _brute_force(lp, blank)
        nbest = ctc_prefix_beam_search_one(lp, beam=200, blank=blank)  # no pruning
        got = {tuple(h): s for h, s in nbest}
        assert got.keys() == exact.keys()
        for k, s in exact.items():
            assert got[k] == pytest.approx(s, abs=1e-5), k
        assert [s for _, s in nbest] == sorted((s for _, s in nbest), reverse=True)
        assert math.isclose(
            float(torch.logsumexp(torch.tensor(list(got.values())), 0)), 0.0, abs_tol=1e-5
        )
    # pruned: the n-best is a subset and its scores are lower bounds of the exact ones
    for h, s in ctc_prefix_beam_search_one(lp, beam=3, blank=0):
        assert s <= _brute_force(lp, 0)[tuple(h)] + 1e-6


def test_prefix_beam_batched_respects_lengths():
    lp = torch.stack([_random_log_probs(12, 6, 1), _random_log_probs(12, 6, 2)])
    out = ctc_prefix_beam_search(lp, torch.tensor([12, 7]), beam=4)
    assert out[0] == ctc_prefix_beam_search_one(lp[0], 4)
    assert out[1] == ctc_prefix_beam_search_one(lp[1, :7], 4)
    assert ctc_prefix_beam_search(lp, torch.tensor([0, 0]), beam=4) == [[([], 0.0)], [([], 0.0)]]


# --------------------------------------------------------------------------------------------
# attention decoder and rescoring
# --------------------------------------------------------------------------------------------
def test_add_sos_eos():
    ys = torch.tensor([[5, 6, 7], [8, -1, -1]])
    ys_in, ys_out, lens = add_sos_eos(ys, torch.tensor([3, 1]), sos_eos=1)
    assert ys_in.tolist() == [[1, 5, 6, 7], [1, 8, 0, 0]]
    assert ys_out.tolist() == [[5, 6, 7, 1], [8, 1, -1, -1]]
    assert lens.tolist() == [4, 2]


def test_decoder_is_causal_and_ignores_padding(model: CtcAttentionModel):
    g = torch.Generator().manual_seed(0)
    enc = torch.randn(1, 9, 64, generator=g)
    hyp = torch.tensor([[1, 5, 9, 12, 20]])
    with torch.no_grad():
        full = model.decoder(enc, torch.tensor([9]), hyp, torch.tensor([5]))
        # a changed future token does not change earlier outputs
        alt = hyp.clone()
        alt[0, 4] = 33
        changed = model.decoder(enc, torch.tensor([9]), alt, torch.tensor([5]))
        torch.testing.assert_close(full[:, :4], changed[:, :4])
        # padded encoder frames and padded tokens are masked
        enc_p = torch.cat([enc, torch.randn(1, 4, 64, generator=g)], dim=1)
        hyp_p = torch.cat([hyp, torch.tensor([[7, 7]])], dim=1)
        padded = model.decoder(enc_p, torch.tensor([9]), hyp_p, torch.tensor([5]))
    torch.testing.assert_close(padded[:, :5], full, atol=1e-5, rtol=1e-5)


def test_attention_scores_match_one_by_one_scoring(model: CtcAttentionModel):
    comp = TorchCtcAttention(model, CHUNK, LEFT)
    g = torch.Generator().manual_seed(1)
    enc = torch.randn(11, 64, generator=g)
    hyps = [[5, 9, 12], [], [7], [30, 31, 32, 33, 34]]
    batched = attention_scores(comp, enc, 9, hyps)
    for h, s in zip(hyps, batched, strict=True):
        ys_in = torch.tensor([[1, *h]])
        lp = comp.decoder_log_probs(
            enc[None, :9], torch.tensor([9]), ys_in, torch.tensor([len(h) + 1])
        )[0]
        want = sum(float(lp[u, y]) for u, y in enumerate([*h, 1]))
        assert s == pytest.approx(want, abs=1e-4)


class _FixedDecoder:
    """Components whose decoder log-probs favour one token (to check the rescoring arithmetic)."""

    vocab_size, blank_id, sos_id, eos_id, chunk_frames = 6, 0, 1, 1, 4

    def __init__(self, favourite: int) -> None:
        self.favourite = favourite

    def decoder_log_probs(self, enc, enc_lens, hyps_in, hyps_lens):
        b, u = hyps_in.shape
        logits = torch.zeros(b, u, self.vocab_size)
        logits[..., self.favourite] = 3.0
        return logits.log_softmax(-1)


def test_attention_rescoring_picks_the_best_combined_score(model: CtcAttentionModel):
    # the arithmetic, with a decoder that likes token 3
    nbest = [([2, 2], -1.0), ([3], -1.5), ([4, 3], -1.2)]
    comp = _FixedDecoder(favourite=3)
    enc = torch.zeros(1, 5, 8)
    att = attention_scores(comp, enc[0], 5, [h for h, _ in nbest])
    for w in (0.0, 0.5, 1.0, 10.0, 100.0):
        combined = [w * c + a for (_, c), a in zip(nbest, att, strict=True)]
        best = nbest[max(range(3), key=combined.__getitem__)][0]
        assert attention_rescoring(comp, enc, torch.tensor([5]), [nbest], w) == [best]
        assert rescore(nbest, att, w) == (best, pytest.approx(max(combined)))
    assert attention_rescoring(comp, enc, torch.tensor([5]), [nbest], 0.0) == [[3]]
    assert attention_rescoring(comp, enc, torch.tensor([5]), [nbest], 100.0) == [[2, 2]]
    # the real decoder on real n-best lists
    tc = TorchCtcAttention(model, CHUNK, LEFT)
    x = torch.randn(2, 160, 80, generator=torch.Generator().manual_seed(3))
    enc, lens, lp = tc.encode(x, torch.tensor([160, 120]))
    nbests = ctc_prefix_beam_search(lp, lens, beam=5)
    chosen = attention_rescoring(tc, enc, lens, nbests, 0.5)
    for i, nb in enumerate(nbests):
        att = attention_scores(tc, enc[i], int(lens[i]), [h for h, _ in nb])
        scores = [0.5 * c + a for (_, c), a in zip(nb, att, strict=True)]
        assert chosen[i] == nb[max(range(len(nb)), key=scores.__getitem__)][0]


# --------------------------------------------------------------------------------------------
# drivers: full context and streaming
# --------------------------------------------------------------------------------------------
def test_streaming_equals_the_chunk_masked_encoder(model: CtcAttentionModel):
    comp = TorchCtcAttention(model, CHUNK, LEFT)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 190, 80, generator=g)
    x_lens = torch.tensor([190, 151, 64])
    with torch.no_grad():
        enc, lens = model.encoder(x, x_lens, chunk_size=CHUNK, left_chunks=LEFT // CHUNK)
        lp = model.ctc_log_probs(enc)
    assert decode_batch(comp, x, x_lens, "ctc_greedy", streaming=True) == ctc_greedy(lp, lens)
    nb = ctc_prefix_beam_search(lp, lens, beam=4)
    assert decode_batch(comp, x, x_lens, "ctc_prefix_beam", streaming=True, beam=4) == [
        b[0][0] for b in nb
    ]
    assert decode_batch(
        comp, x, x_lens, "attention_rescoring", streaming=True, beam=4
    ) == attention_rescoring(comp, enc, lens, nb, 0.5)
    full = decode_batch(comp, x, x_lens, "ctc_prefix_beam", beam=4)
    enc_f, lens_f, lp_f = comp.encode(x, x_lens)
    assert full == [b[0][0] for b in ctc_prefix_beam_search(lp_f, lens_f, 4)]
    with pytest.raises(AsrqError, match="unknown ctc_attention decoding method"):
        decode_batch(comp, x, x_lens, "greedy_search")  # type: ignore[arg-type]


def test_online_ctc_greedy_equals_greedy_over_the_whole_utterance():
    lp = torch.stack([_random_log_probs(23, 4, 5), _random_log_probs(23, 4, 6)])
    lens = torch.tensor([23, 14])
    state = CtcGreedyState(2, blank=0)
    for s in range(0, 24, 4):  # chunks of 4 frames; row 1 runs out after 14
        valid = (lens - s).clamp(min=0, max=4)
        state.advance(lp[:, s : s + 4], valid[: lp[:, s : s + 4].shape[0]])
    assert state.tokens() == ctc_greedy(lp, lens)


def test_config_round_trip_and_validation():
    cfg = tiny_ctc_attention_config()
    again = from_dict(ExperimentConfig, to_dict(cfg))
    assert again.model.head == "ctc_attention" and again.model.ctc_attention.decoder.num_layers == 2
    with pytest.raises(AsrqError, match=r"model.ctc_attention.decoder.num_heads \(5\)"):
        from_dict(
            ExperimentConfig,
            {"model": {"head": "ctc_attention", "ctc_attention": {"decoder": {"num_heads": 5}}}},
        )
    with pytest.raises(AsrqError, match="label_smoothing"):
        from_dict(ExperimentConfig, {"train": {"loss": {"label_smoothing": 1.0}}})
    cfg.model.ctc_attention.decoder.sos_eos_id = 0  # the blank
    with pytest.raises(ValueError, match="sos_eos_id"):
        build_model(cfg.model)


def test_combine_losses_for_both_heads():
    cfg = tiny_ctc_attention_config().train.loss
    hybrid = {"ctc": torch.tensor(10.0), "att": torch.tensor(4.0), "frames": torch.tensor(5)}
    assert float(combine_losses(hybrid, 0, cfg)) == pytest.approx(0.3 * 10 + 0.7 * 4)
    rnnt = {"simple": torch.tensor(2.0), "pruned": torch.tensor(3.0), "ctc": torch.tensor(1.0)}
    cfg.warm_steps = 0
    assert float(combine_losses(rnnt, 10, cfg)) == pytest.approx(0.7 * (0.5 * 2 + 3) + 0.3 * 1)


# --------------------------------------------------------------------------------------------
# training and the CLI on the tiny corpus
# --------------------------------------------------------------------------------------------
def test_tiny_ctc_attention_loss_falls_over_20_steps(tiny_data: TinyData, tmp_path: Path):
    from asrq.train.checkpoint import load_model
    from asrq.train.loop import Trainer

    cfg = tiny_ctc_attention_config(vocab_size=0)
    warm_steps = cfg.train.loss.warm_steps  # the RNN-T loss warm-up; unused by this head
    cfg = tiny_train_config(cfg, tiny_data, tmp_path / "exp", max_steps=20)
    cfg.train.loss.warm_steps = warm_steps
    summary = Trainer(cfg, progress=False).run()
    recs = [json.loads(x) for x in (tmp_path / "exp" / "train_log.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in recs if r.get("event") == "train"}
    assert summary["steps"] == 20 and sorted(train) == list(range(1, 21))
    assert {"ctc", "att"} <= set(train[1]) and "pruned" not in train[1]
    first = sum(train[s]["loss"] for s in (1, 2, 3)) / 3
    last = sum(train[s]["loss"] for s in (18, 19, 20)) / 3
    assert last < 0.8 * first, (first, last)
    loaded = load_model(tmp_path / "exp" / "model.pt")
    assert isinstance(loaded.model, CtcAttentionModel)


def test_decode_cli_on_a_ctc_attention_checkpoint(tiny_data: TinyData, tmp_path: Path):
    from asrq.cli.decode import decode

    ckpt = make_tiny_ctc_attention_checkpoint(tmp_path / "hybrid.pt")
    runner = CliRunner()
    outs = {}
    for method in (*METHODS, "greedy"):
        for streaming in ([] if method == "greedy" else ["--streaming"]), []:
            args = [
                str(ckpt),
                "--cuts",
                str(tiny_data.test_cuts),
                "--out-dir",
                str(tmp_path),
                "--no-progress",
                "--method",
                method,
                "--beam",
                "3",
                *streaming,
            ]
            r = runner.invoke(decode, args)
            assert r.exit_code == 0, r.output
            name = f"test-clean-{method}" + ("-streaming" if streaming else "")
            outs[name] = json.loads((tmp_path / f"wer-{name}.json").read_text())
            assert outs[name]["num_utts"] == 2 and outs[name]["config"]["head"] == "ctc_attention"
    assert outs["test-clean-attention_rescoring"]["config"]["ctc_weight"] == 0.5
    # greedy on a hybrid model is its CTC greedy search
    errs = (tmp_path / "errs-test-clean-greedy.txt").read_text().split("\n", 1)[1]
    assert errs == (tmp_path / "errs-test-clean-ctc_greedy.txt").read_text().split("\n", 1)[1]
    r = runner.invoke(
        decode, [str(ckpt), "--cuts", str(tiny_data.test_cuts), "--method", "modified_beam_search"]
    )
    assert r.exit_code == 2 and "not for a ctc_attention model" in r.output
