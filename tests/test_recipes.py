"""The LibriSpeech recipe end to end (``recipes/librispeech/run.py``, the command users run
first) on a tiny corpus in real LibriSpeech layout made by the synth module: prepare -> bpe ->
a few train steps -> decode -> export. The recipe's own YAML, with overrides that shrink the
model, the data and the run (the architecture, speed perturbation, BPE and decoding method
stay the recipe's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asrq.testing.data import TinyData

ROOT = Path(__file__).resolve().parents[1]

#: a small model of the recipe's shape, and a short run
SMALL = [
    "model.encoder.num_layers=2",
    "model.encoder.d_model=64",
    "model.encoder.num_heads=2",
    "model.encoder.ffn_dim=128",
    "model.encoder.conv_kernel=7",
    "model.rnnt.joiner_dim=64",
    "model.rnnt.predictor.d_model=64",
    "data.vocab_size=64",
    "data.max_duration=12.0",
    "data.num_buckets=2",
    "data.num_workers=0",
    "train.max_steps=3",
    "train.save_every=0",
    "train.eval_every_minutes=0",
    "train.optim.warmup_batches=2",
    "train.loss.warm_steps=2",
    "decode.beam=2",
]


@pytest.mark.slow
def test_librispeech_recipe_runs_end_to_end(tiny_data: TinyData, tmp_path: Path) -> None:
    data = tmp_path / "data"
    exp = tmp_path / "exp"
    overrides = [
        f"data.manifest_dir={data / 'manifests'}",
        f"data.fbank_dir={data / 'fbank'}",
        f"data.lang_dir={data / 'lang_bpe'}",
        f"train.exp_dir={exp}",
        *SMALL,
    ]
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "librispeech" / "run.py"),
        "--corpus-dir",
        str(tiny_data.corpus_dir),
        "--stages",
        "prepare,bpe,train,decode,export",
        "--num-jobs",
        "1",
    ]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((exp / "summary.json").read_text())
    # every stage ran, in order, and left its outputs
    assert list(summary["stage_seconds"]) == ["prepare", "bpe", "train", "decode", "export"]
    assert (data / "fbank" / "librispeech_cuts_train-clean-100.jsonl.gz").is_file()
    assert (data / "lang_bpe" / "bpe.model").is_file()
    assert summary["train_steps"] == 3 and summary["params"] > 0
    # the recipe decodes with modified beam search, full context and streaming
    for tag in ("test-clean-modified_beam_search", "test-clean-modified_beam_search-streaming"):
        wer = json.loads((exp / f"wer-{tag}.json").read_text())
        assert wer["num_utts"] == 2 and wer["num_words"] > 0, wer
        assert wer["lo"] <= wer["wer"] <= wer["hi"] and len(wer["utterances"]) == 2, wer
    # dev and test-other are decoded too, every entry with its 95% bootstrap interval
    for key in ("wer_dev", "wer_test_clean", "wer_test_clean_streaming", "wer_test_other"):
        e = summary[key]
        assert e["lo"] <= e["wer"] <= e["hi"] and e["num_utts"] == 2, (key, e)
    assert summary["onnx_bytes"] > 0
    meta = json.loads((exp / "export" / "metadata.json").read_text())
    assert meta["config"]["data"]["speed_perturb"] is True  # the recipe's own setting
    assert meta["config"]["model"]["rnnt"]["predictor"]["d_model"] == 64
