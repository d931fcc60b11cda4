"""``asrq bench``: input checks and reporting (fast, on a metadata-only model directory), and a
real run on the exported tiny model with a little synthetic audio (slow: needs the export)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from asrq.bench.report import format_table, host_info, metric_records, plot_runs
from asrq.bench.runner import SCHEMA, synthetic_audio
from asrq.cli.bench import bench as bench_cmd
from asrq.utils.io import atomic_write_json
from tests.shared import shared_tiny_export


@pytest.fixture
def meta_only_dir(tmp_path: Path) -> Path:
    """A model directory with only metadata.json (chunk 4 frames = 160 ms)."""
    atomic_write_json(
        tmp_path / "metadata.json",
        {
            "format": "asrq-export-v1",
            "name": "fake",
            "programs": {"onnx": {}},
            "model": {"chunk_frames": 4, "left_frames": 16},
            "config": {"bench": {"threads": [1]}},
        },
    )
    return tmp_path


FAKE_RUN = {
    "backend": "onnx",
    "threads": 1,
    "import_ms": 1.0,
    "load_ms": 5.0,
    "rtf": 0.05,
    "chunk_latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "mean": 1.2, "max": 3.5},
    "encoder_latency_ms": {"p50": 0.5, "p90": 1.0, "p99": 1.5, "mean": 0.6, "max": 2.0},
    "num_chunks": 10,
    "audio_seconds": 2.0,
    "peak_rss_bytes": 2**28,
    "baseline_rss_bytes": 2**27,
    "model_peak_bytes": 2**24,
    "model_rss_bytes": 2**23,
    "memory_method": "test",
    "file_bytes": {"encoder_streaming": 1000},
    "total_file_bytes": 1000,
    "streaming_file_bytes": 1000,
}


def _fake_report() -> dict:
    run2 = copy.deepcopy(FAKE_RUN) | {"backend": "executorch", "threads": 2}
    return {
        "device": host_info(),
        "model": {"name": "fake", "subnet": "d8-w144", "chunk_ms": 160, "num_parameters": 1},
        "settings": {"num_utterances": 1, "audio_seconds": 2.0},
        "runs": [FAKE_RUN, run2],
    }


def test_bench_help():
    res = CliRunner().invoke(bench_cmd, ["--help"])
    assert (
        res.exit_code == 0
        and "--chunk-ms" in res.output
        and "--threads" in res.output
        and "--cuts" in res.output
    )


def test_chunk_ms_mismatch_is_a_clear_error(meta_only_dir: Path):
    res = CliRunner().invoke(bench_cmd, [str(meta_only_dir), "--chunk-ms", "320"])
    assert res.exit_code == 2
    assert (
        "--chunk-ms 320 does not match the export" in res.output
        and "4 encoder frames = 160 ms" in res.output
    )


def test_bench_rejects_a_backend_not_exported_and_bad_threads(meta_only_dir: Path):
    res = CliRunner().invoke(bench_cmd, [str(meta_only_dir), "--backend", "executorch"])
    assert res.exit_code == 2 and "no executorch programs" in res.output
    res = CliRunner().invoke(bench_cmd, [str(meta_only_dir), "--threads", "1,zero"])
    assert res.exit_code == 2 and "comma-separated integers" in res.output


def test_synthetic_audio_is_deterministic():
    a, b = synthetic_audio(1.5, seed=3), synthetic_audio(1.5, seed=3)
    assert a.shape == (24000,) and torch.equal(a, b) and 0.01 < a.abs().max() < 1.0


def test_report_table_records_and_chart(tmp_path: Path):
    report = _fake_report()
    table = format_table(report)
    assert "onnx" in table and "executorch" in table and "0.0500" in table
    recs = metric_records(report)
    assert len(recs) == 2 * len({r["metric"] for r in recs})
    rtf = next(r for r in recs if r["metric"] == "rtf" and r["threads"] == 2)
    assert rtf["benchmarkModel"] == {
        "name": "fake:d8-w144",
        "backend": "executorch-xnnpack",
        "quantization": "fp32",
    }
    assert rtf["actualValue"] == 0.05 and rtf["deviceInfo"]["arch"]
    png = plot_runs(report, tmp_path / "chart.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_bench_runs_and_writes_json(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path):
    exported = shared_tiny_export(tmp_path_factory)
    out = tmp_path / "bench.json"
    args = [
        str(exported),
        "--backend",
        "onnx",
        "--backend",
        "executorch",
        "--threads",
        "1,2",
        "--chunk-ms",
        "160",
        "--seconds",
        "1.5",
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(bench_cmd, args)
    assert res.exit_code == 0, res.output
    assert "RTF" in res.output and "executorch" in res.output
    report = json.loads(out.read_text())
    assert report["schema"] == SCHEMA
    assert {"name", "platform", "cpu_model", "cpu_count"} <= set(report["device"])
    assert (
        report["model"]["name"] == "tiny"
        and report["model"]["chunk_ms"] == 160
        and "subnet" in report["model"]
    )
    assert [(r["backend"], r["threads"]) for r in report["runs"]] == [
        ("onnx", 1),
        ("onnx", 2),
        ("executorch", 1),
        ("executorch", 2),
    ]
    for r in report["runs"]:
        assert (
            r["rtf"] > 0 and r["num_chunks"] == 9
        )  # 1.5 s = 150 fbank frames -> 36 encoder frames
        assert (
            0
            < r["chunk_latency_ms"]["p50"]
            <= r["chunk_latency_ms"]["p90"]
            <= r["chunk_latency_ms"]["p99"]
        )
        assert r["peak_rss_bytes"] > 10 * 2**20 and r["load_ms"] > 0
        assert 0 < r["model_peak_bytes"] < r["peak_rss_bytes"]
        assert r["memory_method"].startswith("linux /proc")
        # the onnxruntime child runs numpy-only: a device needs no torch
        assert r["torch_imported"] == (r["backend"] == "executorch")
        assert set(r["file_bytes"]) == {"encoder", "encoder_streaming", "predictor", "joiner"}
        assert r["total_file_bytes"] == sum(r["file_bytes"].values())
    assert len(report["metrics"]) == 4 * len({m["metric"] for m in report["metrics"]})
    assert out.with_suffix(".png").is_file()


@pytest.mark.slow
def test_bench_streams_a_cuts_manifest(
    tmp_path_factory: pytest.TempPathFactory, tiny_data, tmp_path: Path
):
    exported = shared_tiny_export(tmp_path_factory)
    out = tmp_path / "cuts.json"
    args = [
        str(exported),
        "--backend",
        "onnx",
        "--threads",
        "1",
        "--cuts",
        str(tiny_data.test_cuts),
        "--in-process",
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(bench_cmd, args)
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["settings"]["num_utterances"] == 2 and report["settings"]["audio_seconds"] > 1
    assert len(report["runs"]) == 1 and report["runs"][0]["num_chunks"] > 2
    assert not out.with_suffix(".png").exists()  # one run: no chart


@pytest.mark.slow
def test_numpy_onnx_stream_matches_the_torch_path(tmp_path_factory: pytest.TempPathFactory):
    """The benchmark's torch-free onnxruntime loop emits the token ids of ``stream_decode``."""
    from asrq.bench.lean import decode
    from asrq.decode.streaming import stream_decode
    from asrq.runtime.audio import compute_fbank
    from asrq.runtime.rnnt import ExportedRnnt

    exported = shared_tiny_export(tmp_path_factory)
    comp = ExportedRnnt.open(exported, "onnx")
    for seed, seconds in ((0, 1.3), (1, 2.1)):
        feats = compute_fbank(synthetic_audio(seconds, seed=seed))
        want = [int(t) for t in stream_decode(comp, feats, method="greedy")]
        assert want, "the tiny model emits tokens on this input (else the check is empty)"
        assert decode(exported, feats.numpy()) == want


def _wide_export(factory: pytest.TempPathFactory) -> Path:
    """A tiny model 4x as wide (d_model 256), exported once per session."""
    from asrq.export.pipeline import export_model
    from asrq.testing.models import make_tiny_checkpoint

    base = factory.getbasetemp() / "asrq_wide_export"
    out = base / "model"
    if not (out / "metadata.json").is_file():
        wide = {"d_model": 256, "ffn_dim": 1024, "num_heads": 4}
        export_model(make_tiny_checkpoint(base / "wide.pt", encoder=wide), out)
    return out


@pytest.mark.slow
def test_bench_memory_is_per_runtime_and_grows_with_the_model(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
):
    from asrq.bench.runner import run_bench

    peaks = {}
    for name, model in (
        ("tiny", shared_tiny_export(tmp_path_factory)),
        ("wide", _wide_export(tmp_path_factory)),
    ):
        report = run_bench(
            model,
            ["onnx", "executorch"],
            [1],
            synthetic_seconds=2.0,
            out=tmp_path / f"{name}.json",
            plot=False,
        )
        runs = {r["backend"]: r for r in report["runs"]}
        peaks[name] = {b: r["model_peak_bytes"] for b, r in runs.items()}
        assert peaks[name]["onnx"] != peaks[name]["executorch"]
        for r in runs.values():
            assert r["baseline_rss_bytes"] < r["peak_rss_bytes"]
            assert r["model_peak_bytes"] > r["streaming_file_bytes"] / 2  # the weights are in it
            if name == "wide":
                assert r["model_peak_bytes"] < 10 * r["streaming_file_bytes"], r
    for b in ("onnx", "executorch"):
        assert peaks["wide"][b] > peaks["tiny"][b] + 2**20, peaks
