"""Every WER the recipe pipeline reports carries a 95% bootstrap interval (issue 11): the
decode stage's dev / test-clean / test-other entries and the transcribe stage's real-speech
WER, on the tiny corpus with the tiny model (decode + transcribe stages only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asrq.config import ExperimentConfig
from asrq.testing.data import TinyData
from asrq.utils.io import AsrqError


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.shared import shared_tiny_export

    return shared_tiny_export(tmp_path_factory)


def _cfg(tiny_data: TinyData, exp: Path) -> ExperimentConfig:
    from asrq.testing.models import make_tiny_checkpoint
    from asrq.train.checkpoint import load_model

    make_tiny_checkpoint(exp / "model.pt")
    cfg = load_model(exp / "model.pt").config
    cfg.data.fbank_dir = str(tiny_data.fbank_dir)
    cfg.train.exp_dir = str(exp)
    return cfg


@pytest.mark.slow  # exports the tiny model once per session (shared with test_bench)
def test_pipeline_summary_carries_intervals(
    tiny_data: TinyData, exported: Path, tmp_path: Path
) -> None:
    from asrq.decode.bootstrap import wer_ci
    from asrq.pipeline import run_pipeline

    exp = tmp_path / "exp"
    cfg = _cfg(tiny_data, exp)
    (exp / "export").symlink_to(exported, target_is_directory=True)
    real = tiny_data.corpus_dir / "test-clean"  # audio + *.trans.txt, as ../shared/data/real
    summary = run_pipeline(cfg, ["decode", "transcribe"], real_audio_dir=real, echo=lambda s: None)
    assert json.loads((exp / "summary.json").read_text()) == json.loads(json.dumps(summary))
    for key, split, n in [
        ("wer_dev", "dev-clean", 2),
        ("wer_test_clean", "test-clean", 2),
        ("wer_test_clean_streaming", "test-clean", 2),
        ("wer_test_other", "test-other", 2),
        ("wer_real", None, 2),
    ]:
        e = summary[key]
        assert e["lo"] <= e["wer"] <= e["hi"] and e["num_utts"] == n and e["level"] == 0.95, e
        if split:
            assert e["split"] == split
        # the entry is the interval of the per-utterance rows its JSON holds
        rows = json.loads(Path(e["json"]).read_text())["utterances"]
        ci = wer_ci([(r[1], r[2]) for r in rows])
        assert (round(ci["wer"], 2), round(ci["lo"], 2), round(ci["hi"], 2)) == (
            e["wer"],
            e["lo"],
            e["hi"],
        )
    # the older flat keys stay
    assert summary["wer_test"] == summary["wer_test_clean"]["wer"]
    assert summary["wer_test_streaming"] == summary["wer_test_clean_streaming"]["wer"]
    # real speech: scored against the folder's transcripts, every transcribed file had one
    assert len(summary["transcripts_real"]) == 2
    assert "REF:" in (exp / "errs-real.txt").read_text()


def test_test_other_missing_is_skipped_and_bad_transcripts_fail(
    tiny_data: TinyData, tmp_path: Path
) -> None:
    from asrq.pipeline import decode_splits, read_transcripts, score_real

    exp = tmp_path / "exp"
    cfg = _cfg(tiny_data, exp)
    cfg.data.test_other_split = "no-such-split"
    said: list[str] = []
    out = decode_splits(cfg, exp / "model.pt", exp, said.append)
    assert "wer_test_other" not in out and "wer_test_clean" in out
    assert any("no-such-split" in s for s in said)
    bad = tmp_path / "real" / "1-2.trans.txt"
    bad.parent.mkdir()
    bad.write_text("1-2-0000\n")
    with pytest.raises(AsrqError, match=r"1-2.trans.txt:1: expected"):
        read_transcripts(bad.parent)
    bad.write_text("1-2-0000 HELLO WORLD\n")
    assert score_real([("x/other.flac", "HELLO")], bad.parent, exp) is None
    r = score_real([("x/1-2-0000.flac", "hello")], bad.parent, exp)
    assert r is not None and r["wer"] == 50.0 and r["num_utts"] == 1


def test_compare_records_carry_intervals_and_paired_diffs(
    tiny_data: TinyData, tmp_path: Path
) -> None:
    """asrq.experiments.compare's rows (what models.json holds) from two real decodes of two
    different tiny models on the same utterances."""
    from asrq.experiments.compare import Variant, add_paired, markdown_table, record
    from asrq.pipeline import decode_splits
    from asrq.testing.models import make_tiny_checkpoint

    records = []
    for seed, name in ((0, "base"), (1, "other")):
        exp = tmp_path / name
        cfg = _cfg(tiny_data, exp)
        make_tiny_checkpoint(exp / "model.pt", seed=seed)  # a different model per variant
        summary = decode_splits(cfg, exp / "model.pt", exp, echo=lambda s: None)
        records.append(record(Variant(name, []), cfg, summary))
    add_paired(records)
    assert "vs_baseline" not in records[0]
    vs = records[1]["vs_baseline"]
    assert vs["baseline"] == "base" and set(vs) == {"baseline", "dev", "test_clean", "test_other"}
    for split, key in (("dev", "wer_dev"), ("test_clean", "wer_test_clean")):
        d = vs[split]
        assert d["lo"] <= d["diff"] <= d["hi"] and d["num_utts"] == 2
        want = records[1][key]["wer"] - records[0][key]["wer"]
        assert d["diff"] == pytest.approx(want, abs=0.02)
    table = markdown_table(records)
    e, d = records[1]["wer_test_clean"], vs["test_clean"]
    assert f"{e['wer']:.2f} [{e['lo']:.2f}, {e['hi']:.2f}]" in table
    assert f"{d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]" in table


def test_training_dev_curve_points_carry_intervals(tiny_data: TinyData, tmp_path: Path) -> None:
    import torch

    from asrq.testing.data import tiny_train_config
    from asrq.testing.models import tiny_config
    from asrq.train.loop import train

    torch.set_num_threads(1)
    cfg = tiny_train_config(tiny_config(vocab_size=0), tiny_data, tmp_path / "exp", max_steps=1)
    cfg.train.eval_every_minutes = 1000.0  # only the final point
    (point,) = train(cfg, progress=False)["wer_curve"]
    assert point["step"] == 1
    assert point["wer_dev_lo"] <= round(point["wer_dev"], 2) <= point["wer_dev_hi"], point
