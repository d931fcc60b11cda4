"""The synthetic corpus (espeak-ng, flite, festival): layout, held-out rules (sentences, voice
combinations, the festival-only test-other), determinism, re-runs, the sentence files."""

from __future__ import annotations

import dataclasses
import json
import re
from importlib import resources
from pathlib import Path

import pytest
import soundfile as sf
from click.testing import CliRunner

from asrq.cli.data import data
from asrq.config import SynthConfig
from asrq.data import engines as E
from asrq.data.synth import (
    DEV_SPLIT,
    TEST_OTHER_SPLIT,
    TEST_SPLIT,
    TRAIN_SPLIT,
    check_tools,
    plan_corpus,
    read_synth_info,
    synthesize_corpus,
)
from asrq.data.text import SOURCES, load_sentences, normalize_text, split_clauses
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
    counts = {TRAIN_SPLIT: 9, DEV_SPLIT: 2, TEST_SPLIT: 2, TEST_OTHER_SPLIT: 2}
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
    splits = (TRAIN_SPLIT, DEV_SPLIT, TEST_SPLIT, TEST_OTHER_SPLIT)
    texts = {s: set(_transcripts(corpus, s).values()) for s in splits}
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            assert not (texts[a] & texts[b]), (a, b)
    speakers = json.loads((corpus / "speakers.json").read_text())
    combos = {
        split: {
            (s["engine"], s["voice"], s["variant"])
            for s in speakers.values()
            if s["split"] == split
        }
        for split in splits
    }
    for split in (DEV_SPLIT, TEST_SPLIT, TEST_OTHER_SPLIT):
        assert combos[split] and not (combos[split] & combos[TRAIN_SPLIT])
    engines = {split: {c[0] for c in combos[split]} for split in splits}
    assert engines[TEST_OTHER_SPLIT] == {E.FESTIVAL}
    assert E.FESTIVAL not in engines[TRAIN_SPLIT] | engines[DEV_SPLIT] | engines[TEST_SPLIT]
    assert engines[TRAIN_SPLIT] == {E.ESPEAK, E.FLITE}  # 1 of 3 tiny train speakers is flite
    assert "festival" in (corpus / "SPEAKERS.TXT").read_text()


def _split_texts(utts) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for u in utts:
        out.setdefault(u.speaker.split, set()).add(u.text)
    return out


def test_plan_for_defaults_keeps_rules():
    """The full default plan (no audio): sizes, word counts, disjointness, unseen combos,
    engines per split, both sentence sources in every split."""
    cfg = SynthConfig()
    speakers, utts = plan_corpus(cfg)
    assert len(speakers) == 48 + 4 + 6 + 6 and len(utts) == 48 * 60 + 16 * 20
    texts = _split_texts(utts)
    assert len(texts[TRAIN_SPLIT]) == 48 * 60  # no sentence repeated in train
    held_out = texts[DEV_SPLIT] | texts[TEST_SPLIT] | texts[TEST_OTHER_SPLIT]
    assert len(held_out) == 16 * 20 and not (texts[TRAIN_SPLIT] & held_out)
    assert all(cfg.min_words <= len(u.text.split()) <= cfg.max_words for u in utts)
    train_combos = {(s.engine, s.voice, s.variant) for s in speakers if s.split == TRAIN_SPLIT}
    eval_combos = [(s.engine, s.voice, s.variant) for s in speakers if s.split != TRAIN_SPLIT]
    assert not (set(eval_combos) & train_combos) and len(set(eval_combos)) == len(eval_combos)
    assert len({s.id for s in speakers}) == len(speakers)
    by_split = {
        split: [s.engine for s in speakers if s.split == split]
        for split in (TRAIN_SPLIT, DEV_SPLIT, TEST_SPLIT, TEST_OTHER_SPLIT)
    }
    assert by_split[TRAIN_SPLIT].count(E.FLITE) == round(0.3 * 48)
    assert set(by_split[TEST_SPLIT]) == {E.ESPEAK, E.FLITE}
    assert set(by_split[TEST_OTHER_SPLIT]) == {E.FESTIVAL}
    # held-out festival voices are spread over the voices (they take turns)
    assert {s.voice for s in speakers if s.split == TEST_OTHER_SPLIT} == set(E.FESTIVAL_VOICES)
    for split in (TRAIN_SPLIT, TEST_SPLIT, TEST_OTHER_SPLIT):
        srcs = [u.source for u in utts if u.speaker.split == split]
        assert 0.3 < srcs.count("everyday") / len(srcs) < 0.7, split
    pools = {src: set(load_sentences(source=src)) for src in SOURCES}
    assert all(u.text in pools[u.source] for u in utts)
    assert plan_corpus(cfg) == (speakers, utts)  # deterministic
    assert plan_corpus(SynthConfig(seed=1))[1] != utts


def test_plan_engine_options():
    """flite_share=0 and test_other_speakers=0 give the espeak-ng-only corpus; everyday_share
    picks the sentence source; too many held-out speakers for an engine is a clear error."""
    cfg = SynthConfig(flite_share=0.0, test_other_speakers=0, everyday_share=0.0)
    speakers, utts = plan_corpus(cfg)
    assert {s.engine for s in speakers} == {E.ESPEAK}
    assert {u.source for u in utts} == {"kjv"}
    assert TEST_OTHER_SPLIT not in {s.split for s in speakers}
    _, utts = plan_corpus(SynthConfig(everyday_share=1.0))
    assert {u.source for u in utts} == {"everyday"}
    with pytest.raises(AsrqError, match="festival: at most 21 held-out"):
        plan_corpus(SynthConfig(test_other_speakers=22))
    with pytest.raises(AsrqError, match="flite_share"):
        SynthConfig(flite_share=1.5)


def test_plan_catches_leaks(monkeypatch):
    """The held-out check runs on every plan: a broken split raises, not passes silently."""
    from asrq.data import synth

    _, utts = plan_corpus(SynthConfig(train_speakers=2, dev_speakers=1, test_speakers=1))
    dev = next(u for u in utts if u.speaker.split == DEV_SPLIT)
    train = next(u for u in utts if u.speaker.split == TRAIN_SPLIT)
    leaked = [*utts, dataclasses.replace(train, text=dev.text)]
    with pytest.raises(AsrqError, match="dev/test sentences in train"):
        synth._check_held_out(leaked)
    fest = next(u for u in utts if u.speaker.engine == E.FESTIVAL)
    moved = dataclasses.replace(fest, speaker=dataclasses.replace(fest.speaker, split=DEV_SPLIT))
    with pytest.raises(AsrqError, match="festival"):
        synth._check_held_out([*utts, moved])


def test_deterministic_bytes_via_cli(tiny_data, tmp_path):
    """The CLI with the tiny config reproduces the fixture's corpus byte for byte."""
    c = TINY_SYNTH
    args = ["synth", "--out", str(tmp_path)]
    for opt, value in [
        ("--train-speakers", c.train_speakers),
        ("--train-utts-per-speaker", c.train_utts_per_speaker),
        ("--dev-speakers", c.dev_speakers),
        ("--test-speakers", c.test_speakers),
        ("--eval-utts-per-speaker", c.eval_utts_per_speaker),
        ("--seed", c.seed),
        ("--test-other-speakers", c.test_other_speakers),
    ]:
        args += [opt, str(value)]
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
    with pytest.raises(AsrqError, match="apt-get install espeak-ng sox flite festival festvox-"):
        check_tools()
    only_espeak = SynthConfig(flite_share=0.0, test_other_speakers=0)
    with pytest.raises(AsrqError, match=r"apt-get install espeak-ng sox\)"):
        check_tools(only_espeak)


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_shipped_sentences(source):
    path = resources.files("asrq").joinpath("resources", SOURCES[source])
    raw = path.read_bytes()
    assert len(raw) < 1_500_000
    lines = raw.decode().splitlines()
    assert 3000 <= len(lines) <= 15000
    assert all(LIBRISPEECH_TEXT.match(line) for line in lines)
    assert len(load_sentences(4, 22, source)) > 10000
    readme = resources.files("asrq").joinpath("resources", "README.md").read_text()
    assert SOURCES[source] in readme
    with pytest.raises(AsrqError, match="unknown sentence source"):
        load_sentences(source="nope")


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
