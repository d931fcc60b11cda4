"""Bad corpora: one-line error naming the path, exit code 2, and nothing written."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from asrq.cli.data import data


@pytest.fixture
def corpus(tmp_path: Path, tiny_data) -> Path:
    """A writable copy of the tiny synthetic LibriSpeech folder (15 utterances)."""
    dst = tmp_path / "src" / "LibriSpeech"
    shutil.copytree(tiny_data.corpus_dir, dst)
    return dst


def _first_flac(corpus: Path, split: str) -> Path:
    return sorted((corpus / split).rglob("*.flac"))[0]


def _run(tmp_path: Path, corpus_dir: Path) -> str:
    m, f = tmp_path / "out" / "manifests", tmp_path / "out" / "fbank"
    args = [
        "prepare",
        "librispeech",
        "--corpus-dir",
        str(corpus_dir),
        "--out",
        str(m),
        "--fbank-dir",
        str(f),
        "--num-jobs",
        "1",
    ]
    res = CliRunner().invoke(data, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    written = (
        [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
        if (tmp_path / "out").exists()
        else []
    )
    assert not written
    return lines[0]


def test_missing_corpus_dir(tmp_path):
    missing = tmp_path / "nope" / "LibriSpeech"
    msg = _run(tmp_path, missing)
    assert str(missing) in msg and "does not exist" in msg


def test_parent_of_librispeech_given(tmp_path, corpus):
    msg = _run(tmp_path, corpus.parent)
    assert f"did you mean {corpus}" in msg


def test_no_known_split(tmp_path):
    bad = tmp_path / "weird" / "LibriSpeech"
    (bad / "train-clean-99").mkdir(parents=True)
    msg = _run(tmp_path, bad)
    assert str(bad) in msg and "no LibriSpeech split folders" in msg and "train-clean-100" in msg


def test_zero_byte_audio(tmp_path, corpus):
    flac = _first_flac(corpus, "test-clean")
    flac.write_bytes(b"")
    msg = _run(tmp_path, corpus)
    assert str(flac) in msg and "empty audio file (0 bytes)" in msg


def test_unreadable_audio(tmp_path, corpus):
    flac = _first_flac(corpus, "dev-clean")
    flac.write_bytes(b"this is not a flac file at all" * 10)
    msg = _run(tmp_path, corpus)
    assert str(flac) in msg and "unreadable audio file" in msg


@pytest.mark.skipif(shutil.which("sox") is None, reason="needs sox to write a 0-sample FLAC")
def test_zero_sample_audio(tmp_path, corpus):
    flac = _first_flac(corpus, "train-clean-100")
    flac.unlink()
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(flac), "trim", "0", "0"], check=True
    )
    assert flac.stat().st_size > 0
    msg = _run(tmp_path, corpus)
    assert str(flac) in msg and "no readable samples" in msg


def test_transcript_line_without_audio(tmp_path, corpus):
    trans = sorted((corpus / "train-clean-100").rglob("*.trans.txt"))[-1]
    lines = trans.read_text().splitlines()
    missing = lines[0].split()[0][:-4] + "0099"
    trans.write_text("\n".join([*lines, f"{missing} THIS UTTERANCE HAS NO AUDIO"]) + "\n")
    msg = _run(tmp_path, corpus)
    assert f"{trans}:{len(lines) + 1}" in msg and f"{missing}.flac does not exist" in msg
