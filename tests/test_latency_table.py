"""Per-device latency tables: `asrq bench --layer-table` builds one for a supernet's whole search
space, `asrq search --latency-table` predicts from it (asrq.supernet.latency_table.LatencyTable)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from asrq.cli.main import cli
from asrq.supernet import SearchSpace, SubnetSpec
from asrq.supernet.latency_table import LatencyTable
from asrq.testing.data import TinyData
from asrq.testing.models import make_tiny_supernet_checkpoint, tiny_supernet_config
from asrq.utils.io import AsrqError


@pytest.fixture(scope="module")
def table_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("latency")
    sup = make_tiny_supernet_checkpoint(tmp / "supernet.pt")
    table = tmp / "device.json"
    res = CliRunner().invoke(
        cli,
        [
            "bench",
            str(sup),
            "--layer-table",
            "--threads",
            "1",
            "--repeats",
            "1",
            "--out",
            str(table),
        ],
    )
    assert res.exit_code == 0, res.output
    return sup, table


def test_layer_table_covers_the_whole_search_space(table_setup: tuple[Path, Path]) -> None:
    _, path = table_setup
    table = LatencyTable.load(path)
    cfg = tiny_supernet_config()
    space = SearchSpace(cfg.supernet.search_space, cfg.model)
    assert table.threads == 1 and table.chunk_frames == cfg.model.streaming.chunk_frames
    assert table.device["cpu_count"] >= 1  # where it was timed
    for spec in space.all_specs():
        assert table.predict(spec) > 0
    # a deeper subnet of the same widths costs its extra layers exactly
    big, small = space.largest(), SubnetSpec(**{**space.largest().to_dict(), "num_layers": 1})
    layer = table.entries[LatencyTable.keys(big)[1]]
    assert table.predict(big) - table.predict(small) == pytest.approx((big.num_layers - 1) * layer)


def test_search_predicts_from_a_device_table(
    table_setup: tuple[Path, Path], tiny_data: TinyData, tmp_path: Path
) -> None:
    sup, path = table_setup
    d = json.loads(path.read_text())
    d["ms_per_chunk"] = {
        k: 1000.0 * v + 1.0 for k, v in d["ms_per_chunk"].items()
    }  # a much slower "device"
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(d))
    table = LatencyTable.load(slow)
    out = tmp_path / "search"
    args = [
        "search",
        str(sup),
        "--out",
        str(out),
        "--cuts",
        str(tiny_data.dev_cuts),
        "--max-utts",
        "1",
        "--num-candidates",
        "3",
        "--latency-table",
        str(slow),
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "search.json").read_text())
    for c in report["candidates"]:
        assert c["latency_ms"] == pytest.approx(table.predict(SubnetSpec(**c["spec"])), abs=1e-3)
    assert report["latency_table"]["source"] == str(slow)
    assert LatencyTable.load(out / "latency_table.json").entries == table.entries
    # the budget is in the table's (device's) milliseconds
    res = CliRunner().invoke(cli, [*args, "--budget-ms", "5", "--out", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no candidate within" in res.output


def test_bad_latency_tables_are_clear_errors(
    table_setup: tuple[Path, Path], tmp_path: Path
) -> None:
    _, path = table_setup
    d = json.loads(path.read_text())
    with pytest.raises(AsrqError, match="latency table not found"):
        LatencyTable.load(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(AsrqError, match=r"junk.json: not a JSON latency table"):
        LatencyTable.load(tmp_path / "junk.json")
    (tmp_path / "other.json").write_text(json.dumps({"threads": 1}))
    with pytest.raises(AsrqError, match=r"other.json: not an asrq latency table"):
        LatencyTable.load(tmp_path / "other.json")
    key = next(iter(d["ms_per_chunk"]))
    del d["ms_per_chunk"][key]
    (tmp_path / "partial.json").write_text(json.dumps(d))
    cfg = tiny_supernet_config()
    space = SearchSpace(cfg.supernet.search_space, cfg.model)
    partial = LatencyTable.load(tmp_path / "partial.json")
    with pytest.raises(AsrqError, match=r"partial.json: no entry"):
        for spec in space.all_specs():
            partial.predict(spec)
    with pytest.raises(AsrqError, match=r"timed with chunk_frames .* rebuild it"):
        partial.check_streaming(partial.chunk_frames + 1, partial.left_frames)


def _bench_report(path: Path, params: int, peaks: dict[str, int]) -> Path:
    """An `asrq bench` report as a device writes it (only the fields the memory fit reads)."""
    runs = [{"backend": b, "threads": 1, "model_peak_bytes": v} for b, v in peaks.items()]
    path.write_text(json.dumps({"model": {"num_parameters": params}, "runs": runs}))
    return path


def test_search_max_mb_budgets_measured_memory_from_a_device_table(
    table_setup: tuple[Path, Path], tiny_data: TinyData, tmp_path: Path
) -> None:
    from asrq.supernet.latency_table import MemoryFit

    sup, path = table_setup
    mib = 2**20
    # two exports measured on a device: 12 MiB of runtime buffers + 1.5x the fp32 weights
    a = _bench_report(tmp_path / "a.json", 250_000, {"onnx": 12 * mib + 1_500_000})
    b = _bench_report(tmp_path / "b.json", 1_000_000, {"onnx": 12 * mib + 6_000_000})
    fit = MemoryFit.from_bench([a, b], "onnx")
    assert fit.fixed_bytes == pytest.approx(12 * mib) and fit.per_weight_byte == pytest.approx(1.5)
    table = tmp_path / "mem_table.json"
    res = CliRunner().invoke(
        cli,
        [
            *("bench", str(sup), "--layer-table", "--repeats", "1", "--out", str(table)),
            *("--memory-from", str(a), "--memory-from", str(b)),
        ],
    )
    assert res.exit_code == 0, res.output
    assert LatencyTable.load(table).memory["onnx"].points == fit.points
    args = [
        *("search", str(sup), "--cuts", str(tiny_data.dev_cuts), "--max-utts", "1"),
        *("--num-candidates", "3", "--latency-table", str(table)),
    ]
    out = tmp_path / "s1"
    res = CliRunner().invoke(cli, [*args, "--out", str(out), "--max-mb", "100"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "search.json").read_text())
    assert report["max_mb_budgets"].startswith("measured memory")
    for c in report["candidates"]:
        assert c["memory_mb"] == pytest.approx(fit.predict_bytes(c["params"]) / mib, abs=1e-3)
        assert c["memory_mb"] > 12 > c["size_mb"]  # the tiny subnets' weights are < 12 MB
    # 12 MiB budgets the measured memory (runtime buffers included), not the weights' size
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "s2"), "--max-mb", "12"])
    assert res.exit_code == 2 and "MiB of measured memory" in res.output
    res = CliRunner().invoke(cli, ["search", "--help"])
    text = " ".join(res.output.split())
    assert "peak resident memory" in text and "fp32 weights" in text
