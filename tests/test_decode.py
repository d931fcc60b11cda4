"""Decoding: RNN-T greedy / modified beam search against written-out references, streaming
against the chunk-masked full encoder, CTC greedy, and ``evaluate`` / ``asrq decode`` on a tiny
lhotse manifest built here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from asrq.decode import (
    BeamState,
    GreedyState,
    RnntComponents,
    Streamer,
    TorchRnnt,
    beam_advance,
    ctc_greedy,
    evaluate,
    greedy_advance,
    greedy_search,
    modified_beam_search,
    stream_ctc_greedy_batch,
    stream_decode,
    stream_decode_batch,
)
from asrq.decode.streaming import LOG_EPSILON, iter_windows, num_chunks
from asrq.testing.models import SENTENCES, make_tiny_checkpoint
from asrq.train.checkpoint import load_checkpoint, load_model, save_checkpoint

CHUNK, LEFT = 4, 16  # the tiny checkpoint's streaming settings


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is faster, and much faster on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------
# a random tiny model that emits blanks and varied tokens
# --------------------------------------------------------------------------------------------
def _liven(model: torch.nn.Module, seed: int = 1, blank_bias: float = 3.0) -> None:
    """Re-draw the joiner so a random model's greedy output mixes blanks and many tokens
    (as initialised, one token wins on every frame). The encoder projection is centred on the
    encoder's mean output so frame-to-frame differences matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ref = torch.randn(1, 400, 80, generator=g)
        e, _ = model.encoder(ref, torch.tensor([400]))
        mu, sd = e[0].mean(0), e[0].std(0).mean()
        lin = model.joiner.encoder_proj
        lin.weight.copy_(
            torch.randn(lin.weight.shape, generator=g) * 1.5 / sd / lin.weight.shape[1] ** 0.5
        )
        lin.bias.copy_(-lin.weight @ mu)
        lin = model.joiner.decoder_proj
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / lin.weight.shape[1] ** 0.5)
        lin.bias.zero_()
        out = model.joiner.output_linear
        out.weight.copy_(torch.randn(out.weight.shape, generator=g) * 0.3)
        out.bias.zero_()
        out.bias[model.blank_id] = blank_bias


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    loaded = load_model(path)
    _liven(loaded.model)
    return loaded


@pytest.fixture(scope="module")
def batch():
    """Random fbank-like features (N, T, F) of different lengths, padded with LOG_EPSILON."""
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor([203, 150, 77, 40])
    x = torch.randn(len(lens), int(lens.max()), 80, generator=g)
    for i, t in enumerate(lens.tolist()):
        x[i, t:] = LOG_EPSILON
    return x, lens


# --------------------------------------------------------------------------------------------
# references written out plainly, on the model's modules (not through TorchRnnt)
# --------------------------------------------------------------------------------------------
def _pred_raw(model, ctx_tokens: list[int]) -> torch.Tensor:
    return model.predictor(torch.tensor([ctx_tokens]), need_pad=False)[0, -1]


def _start(model) -> list[int]:
    return [-1] * (model.predictor.context_size - 1) + [model.blank_id]


@torch.no_grad()
def ref_greedy(model, enc_raw: torch.Tensor, max_sym: int = 1) -> tuple[list[int], float]:
    """Unbatched greedy on raw encoder frames (T, D); returns tokens and the path log-prob."""
    ctx, blank = model.predictor.context_size, model.blank_id
    hyp, score = _start(model), 0.0
    for t in range(enc_raw.shape[0]):
        for _ in range(max_sym):
            lp = model.joiner(enc_raw[t], _pred_raw(model, hyp[-ctx:])).log_softmax(-1)
            y = int(lp.argmax())
            score += float(lp[y])
            if y == blank:
                break
            hyp.append(y)
    return hyp[ctx:], score


@torch.no_grad()
def total_log_prob(model, enc_raw: torch.Tensor, seq: list[int]) -> float:
    """log P(seq) summed over all alignments with one symbol (blank or token) per frame."""
    ctx, blank = model.predictor.context_size, model.blank_id
    full = _start(model) + seq
    preds = torch.stack(
        [_pred_raw(model, full[u : u + ctx]) for u in range(len(seq) + 1)]
    )  # (U+1, P)
    lp = model.joiner(enc_raw[:, None], preds[None]).log_softmax(-1).double()  # (T, U+1, V)
    alpha = torch.full((len(seq) + 1,), -math.inf, dtype=torch.float64)
    alpha[0] = 0.0
    tok = torch.tensor(seq, dtype=torch.int64)
    for t in range(enc_raw.shape[0]):
        stay = alpha + lp[t, :, blank]
        move = torch.full_like(alpha, -math.inf)
        if seq:
            move[1:] = alpha[:-1] + lp[t, torch.arange(len(seq)), tok]
        alpha = torch.logaddexp(stay, move)
    return float(alpha[-1])


def _raw(model, x, lens, chunk=-1, left_chunks=-1):
    with torch.no_grad():
        return model.encoder(x, lens, chunk_size=chunk, left_chunks=left_chunks)


# --------------------------------------------------------------------------------------------
# search
# --------------------------------------------------------------------------------------------
def test_torch_rnnt_implements_interface(tiny, batch):
    comp = TorchRnnt(tiny.model, CHUNK, LEFT)
    assert isinstance(comp, RnntComponents)
    x, lens = batch
    enc, enc_lens = comp.encode(x, lens)
    assert enc.shape == (4, 50, tiny.config.model.rnnt.joiner_dim)
    assert enc_lens.tolist() == [50, 36, 18, 9]
    states = comp.init_states(4)
    out, valid, states = comp.encode_chunk(
        x[:, : 4 * CHUNK + 3], torch.tensor([19, 19, 19, 10]), states
    )
    assert out.shape == (4, CHUNK, tiny.config.model.rnnt.joiner_dim) and valid.tolist() == [
        4,
        4,
        4,
        1,
    ]
    assert states[2].tolist() == [CHUNK] * 4
    assert comp.predict(torch.tensor([[-1, 0], [5, 6]])).shape == (
        2,
        tiny.config.model.rnnt.joiner_dim,
    )


@pytest.mark.parametrize("max_sym", [1, 3])
def test_greedy_matches_reference(tiny, batch, max_sym):
    m = tiny.model
    comp = TorchRnnt(m, CHUNK, LEFT)
    x, lens = batch
    enc_raw, enc_lens = _raw(m, x, lens)
    enc, _ = comp.encode(x, lens)
    hyps = greedy_search(comp, enc, enc_lens, max_sym_per_frame=max_sym)
    for i in range(len(lens)):
        ref, _ = ref_greedy(m, enc_raw[i, : enc_lens[i]], max_sym)
        assert hyps[i] == ref
    # the random model is lively: blanks and several distinct tokens
    assert 5 < len(hyps[0]) < int(enc_lens[0]) * max_sym and len(set(hyps[0])) > 5


def test_batched_greedy_equals_per_utterance(tiny, batch):
    comp = TorchRnnt(tiny.model, CHUNK, LEFT)
    x, lens = batch
    enc, enc_lens = comp.encode(x, lens)
    together = greedy_search(comp, enc, enc_lens)
    for i in range(len(lens)):
        t = int(lens[i])
        e1, l1 = comp.encode(x[i : i + 1, :t], lens[i : i + 1])
        assert greedy_search(comp, e1, l1) == [together[i]]


def test_greedy_and_beam_are_resumable(tiny, batch):
    comp = TorchRnnt(tiny.model, CHUNK, LEFT)
    x, lens = batch
    enc, enc_lens = comp.encode(x, lens)
    g, b = GreedyState.create(comp, 4), BeamState.create(comp, 4)
    for s in range(0, enc.shape[1], 7):  # pieces of 7 frames, each stream's valid part
        piece_lens = (enc_lens - s).clamp(0, 7)
        greedy_advance(comp, enc[:, s : s + 7], piece_lens, g)
        beam_advance(comp, enc[:, s : s + 7], piece_lens, b, beam=4)
    assert g.tokens() == greedy_search(comp, enc, enc_lens)
    assert b.tokens() == modified_beam_search(comp, enc, enc_lens, beam=4)


def test_beam_one_equals_greedy(tiny, batch):
    m = tiny.model
    comp = TorchRnnt(m, CHUNK, LEFT)
    x, lens = batch
    enc, enc_lens = comp.encode(x, lens)
    enc_raw, _ = _raw(m, x, lens)
    assert modified_beam_search(comp, enc, enc_lens, beam=1) == greedy_search(comp, enc, enc_lens)
    best = beam_advance(comp, enc, enc_lens, BeamState.create(comp, 4), beam=1).best_hyps()
    for i in range(4):
        _, score = ref_greedy(m, enc_raw[i, : enc_lens[i]])
        assert best[i].log_prob == pytest.approx(score, abs=1e-3)


def test_beam_four_scores_at_least_greedy(tiny, batch):
    m = tiny.model
    comp = TorchRnnt(m, CHUNK, LEFT)
    x, lens = batch
    enc, enc_lens = comp.encode(x, lens)
    enc_raw, _ = _raw(m, x, lens)
    best = beam_advance(comp, enc, enc_lens, BeamState.create(comp, 4), beam=4).best_hyps()
    differs = 0
    for i in range(4):
        e = enc_raw[i, : enc_lens[i]]
        g_tokens, g_path = ref_greedy(m, e)
        b_tokens = best[i].ys[m.predictor.context_size :]
        # the beam's score: log-add over the alignments it merged, a lower bound of the total
        assert best[i].log_prob >= g_path - 1e-4
        assert best[i].log_prob <= total_log_prob(m, e, b_tokens) + 1e-3
        differs += b_tokens != g_tokens
    assert differs >= 1  # the search did something greedy could not


# --------------------------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------------------------
def test_iter_windows_cover_the_utterance():
    lens = torch.tensor([203, 19, 20, 7])
    x = torch.zeros(4, 203, 80)
    wins = list(iter_windows(x, lens, CHUNK))
    assert len(wins) == num_chunks(203, CHUNK) == 13  # 50 encoder frames / 4
    assert all(w.shape == (4, 19, 80) for w, _ in wins)
    assert wins[0][1].tolist() == [19, 19, 19, 7]
    assert wins[1][1].tolist() == [19, 3, 4, 0]
    assert wins[-1][1].tolist() == [203 - 48 * 4, 0, 0, 0]
    assert (wins[-1][0][0, 11:] == LOG_EPSILON).all()  # padded tail


@pytest.mark.parametrize("method", ["greedy", "modified_beam_search"])
def test_streaming_equals_masked_full_context(tiny, batch, method):
    m = tiny.model
    comp = TorchRnnt(m, CHUNK, LEFT)
    x, lens = batch
    enc_raw, enc_lens = _raw(m, x, lens, chunk=CHUNK, left_chunks=LEFT // CHUNK)
    with torch.no_grad():
        enc = m.joiner.encoder_proj(enc_raw)
    if method == "greedy":
        expected = greedy_search(comp, enc, enc_lens)
    else:
        expected = modified_beam_search(comp, enc, enc_lens, beam=4)
    assert stream_decode_batch(comp, x, lens, method=method) == expected
    for i in range(len(lens)):
        assert stream_decode(comp, x[i, : lens[i]], method=method) == expected[i]
    # full context differs from the chunked model (else this test checks nothing)
    full, full_lens = comp.encode(x, lens)
    assert greedy_search(comp, full, full_lens) != expected


def test_streamer_fed_in_irregular_blocks(tiny, batch):
    comp = TorchRnnt(tiny.model, CHUNK, LEFT)
    x, lens = batch
    feats = x[0, : lens[0]]
    s = Streamer(comp)
    partial_lengths = []
    for start, size in zip([0, 5, 6, 40, 41, 120], [5, 1, 34, 1, 79, 200], strict=True):
        partial_lengths.append(len(s.accept(feats[start : start + size])))
    assert s.num_frames == feats.shape[0]
    assert partial_lengths == sorted(partial_lengths) and partial_lengths[-1] > 0
    assert s.finish() == stream_decode(comp, feats)
    with pytest.raises(RuntimeError):
        s.accept(feats[:3])
    assert stream_decode(comp, feats[:6]) == []  # too short for one encoder frame


def test_streaming_ctc_equals_masked_full_context(tiny, batch):
    m = tiny.model
    comp = TorchRnnt(m, CHUNK, LEFT)
    x, lens = batch
    enc_raw, enc_lens = _raw(m, x, lens, chunk=CHUNK, left_chunks=LEFT // CHUNK)
    with torch.no_grad():
        expected = ctc_greedy(m.ctc_log_probs(enc_raw), enc_lens, m.blank_id)
    assert stream_ctc_greedy_batch(comp, x, lens) == expected
    assert sum(len(h) for h in expected) > 0


# --------------------------------------------------------------------------------------------
# CTC
# --------------------------------------------------------------------------------------------
def test_ctc_greedy_hand_made():
    # frames' argmax: row 0: a a _ a b b _ _ c  (blank 0, a=1, b=2, c=3); row 1 has 4 valid frames
    best = [[1, 1, 0, 1, 2, 2, 0, 0, 3], [2, 0, 2, 2, 3, 3, 3, 3, 3]]
    lp = torch.full((2, 9, 4), -5.0)
    for n, row in enumerate(best):
        for t, v in enumerate(row):
            lp[n, t, v] = -0.1
    assert ctc_greedy(lp, torch.tensor([9, 4]), blank=0) == [[1, 1, 2, 3], [2, 2]]
    assert ctc_greedy(lp, torch.tensor([0, 1]), blank=0) == [[], [2]]
    assert ctc_greedy(lp, torch.tensor([9, 9]), blank=3) == [
        [1, 0, 1, 2, 0],
        [2, 0, 2],
    ]  # blank id 3
    assert ctc_greedy(torch.zeros(3, 0, 4), torch.zeros(3, dtype=torch.int64)) == [[], [], []]


# --------------------------------------------------------------------------------------------
# evaluate and the CLI on a tiny lhotse manifest
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_cuts(tmp_path_factory):
    """4 generated utterances (1.1-3.0 s) with fbank in a LilcomChunkyWriter store."""
    import soundfile as sf
    from lhotse import (
        CutSet,
        Fbank,
        FbankConfig,
        LilcomChunkyWriter,
        Recording,
        RecordingSet,
        SupervisionSegment,
        SupervisionSet,
    )

    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    recs, sups = [], []
    for i, dur in enumerate([1.1, 3.0, 2.2, 1.7]):
        t = np.arange(int(16000 * dur)) / 16000
        wav = 0.3 * np.sin(
            2 * np.pi * (200 + 150 * i) * t * (1 + 0.3 * t)
        ) + 0.05 * rng.standard_normal(t.shape)
        sf.write(d / f"utt{i}.wav", wav.astype(np.float32), 16000)
        rec = Recording.from_file(d / f"utt{i}.wav", recording_id=f"utt{i}")
        recs.append(rec)
        sups.append(
            SupervisionSegment(f"utt{i}", f"utt{i}", 0.0, rec.duration, text=SENTENCES[i].lower())
        )
    cuts = CutSet.from_manifests(
        RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups)
    )
    cuts = cuts.compute_and_store_features(
        Fbank(FbankConfig(num_mel_bins=80)),
        d / "feats",
        num_jobs=1,
        storage_type=LilcomChunkyWriter,
        progress_bar=False,
    )
    path = d / "librispeech_cuts_test-clean.jsonl.gz"
    cuts.to_file(path)
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny, tiny_cuts):
    """The livened tiny model saved as a checkpoint whose data.fbank_dir holds ``tiny_cuts``."""
    from asrq.config import to_dict
    from asrq.train.checkpoint import model_payload

    cfg = tiny.config
    cfg.data.fbank_dir = str(tiny_cuts.parent)
    path = tmp_path_factory.mktemp("exp") / "model.pt"
    save_checkpoint(path, model_payload(tiny.model, cfg, tiny.bpe_model_bytes, step=7))
    assert load_checkpoint(path)["config"] == to_dict(cfg)
    return path


def test_evaluate_matches_direct_decoding(tiny, tiny_cuts):
    from lhotse import CutSet

    m = tiny.model
    comp = TorchRnnt(m, CHUNK, LEFT)
    m.train()
    res = evaluate(tiny, tiny_cuts, method="greedy", max_duration=4.0, progress=False)
    assert m.training  # mode restored
    m.eval()
    cuts = list(CutSet.from_file(tiny_cuts))
    s_res = evaluate(tiny, tiny_cuts, method="greedy", streaming=True, progress=False)
    assert [r.cut_id for r in res.results] == [c.id for c in cuts]
    assert res.num_words == sum(len(s.split()) for s in SENTENCES[:4]) and res.num_utts == 4
    assert res.errors == sum(r.errors for r in res.results) and res.wer == pytest.approx(
        100 * res.errors / res.num_words
    )
    assert res.audio_seconds == pytest.approx(8.0) and res.rtf > 0
    for c, r in zip(cuts, res.results, strict=True):
        f = torch.from_numpy(c.load_features())[None]
        enc, enc_lens = comp.encode(f, torch.tensor([f.shape[1]]))
        assert r.hyp == " ".join(
            tiny.sp.decode(greedy_search(comp, enc, enc_lens)[0]).upper().split()
        )
        assert r.ref == c.supervisions[0].text.upper()
        streamed = stream_decode(comp, f[0])
        assert s_res.results[cuts.index(c)].hyp == " ".join(
            tiny.sp.decode(streamed).upper().split()
        )
    assert evaluate(tiny, tiny_cuts, max_utts=2, progress=False).num_utts == 2


def test_decode_cli(tiny_ckpt, tiny_cuts, tmp_path):
    from lhotse import CutSet

    from asrq.cli.decode import decode

    runner = CliRunner()
    r = runner.invoke(decode, ["--help"])
    assert (
        r.exit_code == 0
        and "--streaming / --full-context" in r.output
        and "modified_beam_search" in r.output
    )

    # default cuts from the checkpoint's data.fbank_dir, default out dir = the checkpoint's folder
    r = runner.invoke(decode, [str(tiny_ckpt), "--no-progress"])
    assert r.exit_code == 0, r.output
    out = json.loads((tiny_ckpt.parent / "wer-test-clean-greedy.json").read_text())
    assert out["num_utts"] == 4 and out["num_words"] == sum(len(s.split()) for s in SENTENCES[:4])
    assert out["errors"] == out["ins"] + out["del"] + out["sub"]
    assert out["wer"] == pytest.approx(100 * out["errors"] / out["num_words"], abs=1e-3)
    assert out["config"]["method"] == "greedy" and out["config"]["step"] == 7 and out["rtf"] > 0
    # the 95% bootstrap interval over utterances, and the rows a paired comparison needs
    assert out["lo"] <= out["wer"] <= out["hi"] and out["level"] == 0.95, out
    ids = [c.id for c in CutSet.from_file(tiny_cuts)]
    assert [u[0] for u in out["utterances"]] == ids
    assert sum(u[1] for u in out["utterances"]) == out["errors"]
    assert f"[95% CI {out['lo']}, {out['hi']}]" in r.output
    errs = (tiny_ckpt.parent / "errs-test-clean-greedy.txt").read_text()
    assert f"%WER = {out['wer']:.2f}" in errs and f"{out['ins']} insertions" in errs
    assert f":\tREF: {SENTENCES[1]}\n" in errs and "\tALI: (" in errs
    assert f"%WER {out['wer']:.2f}" in r.output

    for args, name in [
        (
            ["--method", "modified_beam_search", "--beam", "3", "--streaming"],
            "test-clean-modified_beam_search-streaming",
        ),
        (["--method", "ctc_greedy", "--max-utts", "2"], "test-clean-ctc_greedy"),
    ]:
        r = runner.invoke(
            decode,
            [
                str(tiny_ckpt),
                "--cuts",
                str(tiny_cuts),
                "--out-dir",
                str(tmp_path),
                "--no-progress",
                *args,
            ],
        )
        assert r.exit_code == 0, r.output
        out = json.loads((tmp_path / f"wer-{name}.json").read_text())
        assert (tmp_path / f"errs-{name}.txt").is_file()
    assert out["num_utts"] == 2

    # bad input: one-line errors, exit code 2
    r = runner.invoke(decode, [str(tmp_path / "nope.pt")])
    assert r.exit_code == 2 and "checkpoint not found" in r.output
    r = runner.invoke(decode, [str(tiny_ckpt), "--cuts", str(tmp_path / "nope.jsonl.gz")])
    assert r.exit_code == 2 and "cuts manifest not found" in r.output
    r = runner.invoke(decode, [str(tiny_ckpt), "--split", "dev-clean"])
    assert r.exit_code == 2 and "librispeech_cuts_dev-clean.jsonl.gz" in r.output
    assert len(r.output.strip().splitlines()) == 1
