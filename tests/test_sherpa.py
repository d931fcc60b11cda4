"""sherpa-onnx streaming: ``asrq export --sherpa`` writes a layout the real sherpa-onnx package's
online transducer loads, whose transcripts equal ``asrq transcribe --streaming`` (onnx), and
``asrq bench --backend sherpa-onnx`` measures it beside asrq's own runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from asrq.cli.bench import bench as bench_cmd
from asrq.utils.io import AsrqError, atomic_write_json

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"


def sherpa_export(factory: pytest.TempPathFactory) -> Path:
    """The session's tiny model (the recipe of test_export.py) exported with ``--sherpa``
    (ONNX only)."""
    from asrq.cli.export import export as export_cmd
    from asrq.testing.models import make_tiny_checkpoint

    base = factory.getbasetemp() / "asrq_tiny_sherpa"
    out = base / "model"
    if not (out / "metadata.json").is_file():
        ckpt = make_tiny_checkpoint(base / "tiny.pt")
        args = [str(ckpt), "--out", str(out), "--no-executorch", "--sherpa"]
        res = CliRunner().invoke(export_cmd, args)
        assert res.exit_code == 0, res.output
    return out


def _test_audio(tiny_data) -> list[tuple[str, np.ndarray]]:
    """The tiny test set's recordings and, where the checkout has them, the real files."""
    from asrq.data.loader import load_cuts
    from asrq.runtime.audio import load_audio

    out = [(c.id, c.load_audio().mean(axis=0)) for c in load_cuts(tiny_data.test_cuts)]
    real = sorted(REAL.glob("**/*.flac"))[:3]
    out += [(p.name, load_audio(p).numpy()) for p in real]
    return out


@pytest.mark.slow
def test_sherpa_streaming_equals_asrq_transcribe(
    tmp_path_factory: pytest.TempPathFactory, tiny_data
) -> None:
    import torch

    from asrq.bench.sherpa import open_recognizer, read_token_ids, transcribe_ids
    from asrq.runtime.audio import compute_fbank
    from asrq.runtime.model_dir import read_model_dir
    from asrq.runtime.rnnt import RnntRuntime

    md = read_model_dir(sherpa_export(tmp_path_factory))
    meta = md.meta["sherpa"]
    assert meta["model_type"] == "conformer" and set(meta["files"]) >= {"encoder.onnx"}
    c = md.model["chunk_frames"]
    asrq = RnntRuntime().transcriber(md, "onnx", True, "greedy", 1, 4)  # transcribe --streaming
    rec = open_recognizer(md.path / "sherpa", threads=1)
    ids = read_token_ids(md.path / "sherpa")
    window = 4 * c  # fbank frames per sherpa call beyond the 3 overlapping ones
    audio = _test_audio(tiny_data)
    assert len(audio) >= 2
    for name, samples in audio:
        # whole windows: T = 4Ck + 5 fbank frames (sherpa's online fbank holds back the last
        # frame, whose 25 ms runs past the end): both decode the same Ck encoder frames from k
        # full windows, so the only difference left is the runtime
        k = (len(samples) // 160 - 5) // window
        whole = np.ascontiguousarray(samples[: 160 * (window * k + 5)], dtype=np.float32)
        want = asrq(compute_fbank(torch.from_numpy(whole)))
        assert len(want) > 5, name  # the random tiny model emits tokens (else nothing is checked)
        got = transcribe_ids(rec, ids, whole, c, tail_padding_s=0.0)
        assert got == want, name
        # the whole file: sherpa decodes 0.66 s of appended silence after asrq's last frame
        want = asrq(compute_fbank(torch.from_numpy(np.ascontiguousarray(samples))))
        got = transcribe_ids(rec, ids, samples, c)
        assert got[: len(want)] == want, name


@pytest.mark.slow
def test_bench_measures_sherpa_beside_asrq(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    exported = sherpa_export(tmp_path_factory)
    out = tmp_path / "bench.json"
    args = [str(exported), "--threads", "1", "--seconds", "2", "--out", str(out)]
    res = CliRunner().invoke(bench_cmd, args)  # default: every runtime the export has
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    runs = {r["backend"]: r for r in report["runs"]}
    assert list(runs) == ["onnx", "sherpa-onnx"]
    s = runs["sherpa-onnx"]
    assert s["child"] == "numpy+sherpa-onnx" and s["torch_imported"] is False
    assert s["rtf"] > 0 and s["chunk_latency_ms"]["p90"] > 0 and s["num_chunks"] >= 12
    assert 0 < s["model_peak_bytes"] < s["peak_rss_bytes"]
    assert s["streaming_file_bytes"] == sum(
        v for k, v in s["file_bytes"].items() if k.startswith("sherpa/")
    )
    assert s["flush_ms"] > 0 and report["settings"]["sherpa_tail_padding_s"] == 0.66
    recs = [m for m in report["metrics"] if m["benchmarkModel"]["backend"] == "sherpa-onnx"]
    assert recs and "sherpa-onnx" in res.output


def test_sherpa_runtime_needs_the_layout(tmp_path: Path) -> None:
    atomic_write_json(
        tmp_path / "metadata.json",
        {
            "format": "asrq-export-v1",
            "programs": {"onnx": {}},
            "model": {"chunk_frames": 4, "left_frames": 16},
        },
    )
    res = CliRunner().invoke(bench_cmd, [str(tmp_path), "--backend", "sherpa-onnx"])
    assert res.exit_code == 2 and "no sherpa-onnx files" in res.output and "--sherpa" in res.output


def test_sherpa_layout_is_for_the_conformer_transducer() -> None:
    from asrq.export.sherpa import check_supported
    from asrq.models import build_model
    from asrq.testing.models import tiny_config

    check_supported(build_model(tiny_config().model))
    sf = build_model(tiny_config(encoder={"type": "stateformer"}).model)
    with pytest.raises(AsrqError, match="Conformer"):
        check_supported(sf)
