"""The LibriSpeech recipe on the tiny synthetic corpus and on the real utterances."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from lhotse import load_manifest

from asrq.cli.data import data
from asrq.data.prepare import cuts_path, prepare_librispeech, read_prepare_info

# The real recordings live beside the repo (../shared/data/real); ASRQ_REAL_DATA overrides.
REAL = (
    Path(os.environ.get("ASRQ_REAL_DATA", Path(__file__).resolve().parents[2] / "shared/data/real"))
    / "LibriSpeech"
)


def _trans(corpus: Path, split: str) -> dict[str, str]:
    out = {}
    for t in (corpus / split).rglob("*.trans.txt"):
        for line in t.read_text().splitlines():
            uid, text = line.split(" ", 1)
            out[uid] = text
    return out


def _check_cuts(path: Path, expected: dict[str, str]) -> None:
    cuts = load_manifest(path)
    assert len(cuts) == len(expected)
    for cut in cuts:
        feats = cut.load_features()
        assert feats.shape == (cut.num_frames, 80)
        assert abs(feats.shape[0] - round(cut.duration * 100)) <= 1  # 10 ms hop
        assert Path(cut.features.storage_path).is_absolute()
        assert cut.supervisions[0].text == expected[cut.recording_id]


def test_tiny_corpus(tiny_data):
    for split, n in (
        ("train-clean-100", 9),
        ("dev-clean", 2),
        ("test-clean", 2),
        ("test-other", 2),
    ):
        path = tiny_data.cuts(split)
        _check_cuts(path, _trans(tiny_data.corpus_dir, split))
        for kind in ("recordings", "supervisions"):
            assert (tiny_data.manifest_dir / f"librispeech_{kind}_{split}.jsonl.gz").is_file()
        assert read_prepare_info(tiny_data.fbank_dir, split)["cuts"] == n
    leftovers = [p for p in tiny_data.fbank_dir.rglob("*") if ".tmp" in p.name]
    assert not leftovers


def test_rerun_skips(tiny_data):
    files = [p for p in tiny_data.fbank_dir.rglob("*") if p.is_file()]
    files += [p for p in tiny_data.manifest_dir.rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in files}
    out = prepare_librispeech(
        tiny_data.corpus_dir,
        tiny_data.manifest_dir,
        tiny_data.fbank_dir,
        num_jobs=1,
        progress=False,
    )
    assert out == {
        s: cuts_path(tiny_data.fbank_dir, s)
        for s in ("dev-clean", "test-clean", "test-other", "train-clean-100")
    }
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_speed_perturb_and_settings_change(tiny_data, tmp_path):
    m, f = tmp_path / "manifests", tmp_path / "fbank"
    prepare_librispeech(tiny_data.corpus_dir, m, f, num_jobs=1, progress=False)
    eval_mtime = cuts_path(f, "dev-clean").stat().st_mtime_ns
    prepare_librispeech(tiny_data.corpus_dir, m, f, speed_perturb=True, num_jobs=1, progress=False)
    train = load_manifest(cuts_path(f, "train-clean-100"))
    assert len(train) == 27
    by_id = {c.id: c for c in train}
    for cut in train:
        if cut.id.endswith("_sp0.9"):
            base = by_id[cut.id[: -len("_sp0.9")]]
            assert cut.duration == pytest.approx(base.duration / 0.9, abs=0.02)
            assert cut.load_features().shape[1] == 80
    assert sum(c.id.endswith("_sp1.1") for c in train) == 9
    # eval splits are never perturbed, so they were not redone
    assert cuts_path(f, "dev-clean").stat().st_mtime_ns == eval_mtime
    assert len(load_manifest(cuts_path(f, "dev-clean"))) == 2


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real utterances not found at {REAL}")
def test_real_librispeech_via_cli(tmp_path):
    m, f = tmp_path / "manifests", tmp_path / "fbank"
    args = [
        "prepare",
        "librispeech",
        "--corpus-dir",
        str(REAL),
        "--out",
        str(m),
        "--fbank-dir",
        str(f),
        "--num-jobs",
        "1",
    ]
    res = CliRunner().invoke(data, args)
    assert res.exit_code == 0, res.output
    assert "test-clean" in res.output and "6 cuts" in res.output
    _check_cuts(cuts_path(f, "test-clean"), _trans(REAL, "test-clean"))
    assert not (f / "librispeech_cuts_train-clean-100.jsonl.gz").exists()
    res = CliRunner().invoke(data, args)  # re-run: skipped, same answer
    assert res.exit_code == 0 and "6 cuts" in res.output
