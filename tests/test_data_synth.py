"""The espeak-ng corpus: layout, held-out rules, determinism, re-runs, the sentence file."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest
import soundfile as sf
from click.testing import CliRunner

from asrq.cli.data import data
from asrq.config import SynthConfig
from asrq.data.synth import (
    DEV_SPLIT,
    TEST_SPLIT,
    TRAIN_SPLIT,
    check_tools,
    plan_corpus,
    read_synth_info,
    synthesize_corpus,
)
from asrq.data.text import load_sentences, normalize_text, split_clauses
from asrq.testing.data import TINY_SYNTH
from asrq.utils.io import AsrqError

LIBRISPEECH_TEXT = re.compile(r"^[A-Z']+( [A-Z']+)*$")


def _transcripts(corpus: Path, split: str) -> dict[str, str]:
    out = {}
    for trans in (corpus / split).rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            uid, text = line.split(" ", 1)
            out[uid] = text
    return out


def test_layout_and_audio(tiny_data):
    corpus = tiny_data.corpus_dir
    assert corpus.name == "LibriSpeech"
    counts = {TRAIN_SPLIT: 9, DEV_SPLIT: 2, TEST_SPLIT: 2}
    for split, n in counts.items():
        flacs = sorted((corpus / split).rglob("*.flac"))
        assert len(flacs) == n
        trans = _transcripts(corpus, split)
        assert sorted(trans) == sorted(f.stem for f in flacs)
        for f in flacs:
            spk, chapter, utt = f.stem.split("-")
            assert f.parent == corpus / split / spk / chapter and len(utt) == 4
            assert (f.parent / f"{spk}-{chapter}.trans.txt").is_file()
            info = sf.info(str(f))
            assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
            assert 0.5 < info.duration < 20
        assert all(LIBRISPEECH_TEXT.match(t) for t in trans.values())
    assert (corpus / "SPEAKERS.TXT").is_file()
    summary = read_synth_info(corpus)["summary"]
    assert {k: v["utterances"] for k, v in summary.items()} == counts


def test_held_out_sentences_and_speakers(tiny_data):
    corpus = tiny_data.corpus_dir
    train = set(_transcripts(corpus, TRAIN_SPLIT).values())
    dev = set(_transcripts(corpus, DEV_SPLIT).values())
    test = set(_transcripts(corpus, TEST_SPLIT).values())
    assert not (train & dev) and not (train & test) and not (dev & test)
    speakers = json.loads((corpus / "speakers.json").read_text())
    combos = {
        split: {(s["voice"], s["variant"]) for s in speakers.values() if s["split"] == split}
        for split in (TRAIN_SPLIT, DEV_SPLIT, TEST_SPLIT)
    }
    assert not (combos[TEST_SPLIT] & combos[TRAIN_SPLIT])
    assert not (combos[DEV_SPLIT] & combos[TRAIN_SPLIT])


def test_plan_for_defaults_keeps_rules():
    """The full default plan (no audio): sizes, word counts, disjointness, unseen combos."""
    cfg = SynthConfig()
    speakers, utts = plan_corpus(cfg)
    assert len(speakers) == 48 + 4 + 6 and len(utts) == 48 * 60 + 10 * 20
    texts = {
        s: {u.text for u in utts if u.speaker.split == s}
        for s in (TRAIN_SPLIT, DEV_SPLIT, TEST_SPLIT)
    }
    assert len(texts[TRAIN_SPLIT]) == 48 * 60  # no sentence repeated in train
    assert not (texts[TRAIN_SPLIT] & (texts[DEV_SPLIT] | texts[TEST_SPLIT]))
    assert all(cfg.min_words <= len(u.text.split()) <= cfg.max_words for u in utts)
    train_combos = {(s.voice, s.variant) for s in speakers if s.split == TRAIN_SPLIT}
    eval_combos = [(s.voice, s.variant) for s in speakers if s.split != TRAIN_SPLIT]
    assert not (set(eval_combos) & train_combos) and len(set(eval_combos)) == len(eval_combos)
    assert len({s.id for s in speakers}) == len(speakers)
    assert plan_corpus(cfg) == (speakers, utts)  # deterministic
    assert plan_corpus(SynthConfig(seed=1))[1] != utts


def test_deterministic_bytes_via_cli(tiny_data, tmp_path):
    """The CLI with the tiny config reproduces the fixture's corpus byte for byte."""
    c = TINY_SYNTH
    args = [
        "synth",
        "--out",
        str(tmp_path),
        "--train-speakers",
        str(c.train_speakers),
        "--train-utts-per-speaker",
        str(c.train_utts_per_speaker),
        "--dev-speakers",
        str(c.dev_speakers),
        "--test-speakers",
        str(c.test_speakers),
        "--eval-utts-per-speaker",
        str(c.eval_utts_per_speaker),
        "--seed",
        str(c.seed),
    ]
    res = CliRunner().invoke(data, args)
    assert res.exit_code == 0, res.output
    assert "train-clean-100" in res.output and "total" in res.output
    a, b = tiny_data.corpus_dir, tmp_path / "LibriSpeech"
    files_a = sorted(
        p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != ".asrq_synth.json"
    )
    files_b = sorted(
        p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != ".asrq_synth.json"
    )
    assert files_a == files_b and len(files_a) > 13
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_rerun_skips_and_config_change_needs_force(tmp_path):
    cfg = SynthConfig(
        train_speakers=1,
        train_utts_per_speaker=1,
        dev_speakers=1,
        test_speakers=1,
        eval_utts_per_speaker=1,
    )
    corpus = synthesize_corpus(tmp_path, cfg, num_jobs=1, progress=False)
    flac = next(corpus.rglob("*.flac"))
    mtime = flac.stat().st_mtime_ns
    assert synthesize_corpus(tmp_path, cfg, progress=False) == corpus
    assert flac.stat().st_mtime_ns == mtime
    # an interrupted run resumes: a missing file is made again, others are kept
    flac.unlink()
    marker = json.loads((corpus / ".asrq_synth.json").read_text())
    (corpus / ".asrq_synth.json").write_text(json.dumps({**marker, "complete": False}))
    synthesize_corpus(tmp_path, cfg, progress=False)
    assert flac.is_file()

    other = SynthConfig(**{**cfg.__dict__, "seed": 7})
    with pytest.raises(AsrqError, match="different synth config.*--force"):
        synthesize_corpus(tmp_path, other, progress=False)
    synthesize_corpus(tmp_path, other, force=True, progress=False)
    assert read_synth_info(corpus)["config"]["seed"] == 7


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "LibriSpeech" / "mine").mkdir(parents=True)
    cfg = SynthConfig(train_speakers=1, dev_speakers=1, test_speakers=1)
    for force in (False, True):
        with pytest.raises(AsrqError, match="not made by `asrq data synth`"):
            synthesize_corpus(tmp_path, cfg, force=force, progress=False)
    assert (tmp_path / "LibriSpeech" / "mine").is_dir()


def test_missing_tools_message(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no espeak-ng, no sox
    with pytest.raises(AsrqError, match="apt-get install espeak-ng sox"):
        check_tools()


def test_shipped_sentences():
    path = resources.files("asrq").joinpath("resources", "kjv_sentences.txt")
    raw = path.read_bytes()
    assert len(raw) < 1_500_000
    lines = raw.decode().splitlines()
    assert 3000 <= len(lines) <= 15000
    assert all(LIBRISPEECH_TEXT.match(line) for line in lines)
    assert len(load_sentences(4, 22)) > 10000
    assert resources.files("asrq").joinpath("resources", "README.md").is_file()


def test_normalize_and_split():
    assert normalize_text("Am I my brother's keeper?") == "AM I MY BROTHER'S KEEPER"
    assert normalize_text("to God-ward, 'saith' he") == "TO GOD WARD SAITH HE"
    assert normalize_text("in the 3 days") == ""
    assert split_clauses("And God said, Let there be light: and there was light.", 4, 22) == [
        "AND GOD SAID LET THERE BE LIGHT",
        "AND THERE WAS LIGHT",
    ]
    long = ", ".join(["one two three four five"] * 6)
    assert all(len(c.split()) <= 12 for c in split_clauses(long, 3, 12))
