"""The native runner (export/runner): built with CMake against the executorch wheel's libraries,
its C++ fbank against lhotse's, its transcripts against the Python ExecuTorch streaming path
(``asrq transcribe --backend executorch --streaming``) on real LibriSpeech speech, and the same
CMake project cross-compiled for linux-aarch64 and run under qemu-aarch64 (identical token ids).

Slow: the host build takes ~30 s on 2 cores the first time (cached in build/runner-host), the
tiny export is shared with test_export.py / test_transcribe.py, the aarch64 build fetches the
manylinux_2_28_aarch64 wheel once into build/cache."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrq.decode.streaming import num_chunks, stream_decode
from asrq.device.build import RunnerBuild, build_runner
from asrq.runtime.audio import compute_fbank, load_audio, load_features
from asrq.runtime.heads import load_exported
from asrq.runtime.transcribe import transcribe
from tests.shared import shared_tiny_export

REAL = Path("/work/shared/data/real")
SPEECH = sorted((REAL / "LibriSpeech" / "test-clean").rglob("*.flac"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_export(tmp_path_factory)


@pytest.fixture(scope="module")
def runner() -> RunnerBuild:
    return build_runner("host")


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three real utterances as 16 kHz PCM-16 wav (the runner reads wav only), the shortest
    first, plus a cut of odd length (fbank edge padding)."""
    assert len(SPEECH) >= 3, f"{REAL}: expected LibriSpeech test-clean flac files"
    out = tmp_path_factory.mktemp("runner_wavs")
    paths = []
    clips = sorted((sf.read(str(p), dtype="int16")[0] for p in SPEECH[:4]), key=len)[:3]
    clips.append(clips[0][: 16000 + 1234 + 37])
    for i, pcm in enumerate(clips):
        paths.append(out / f"u{i}.wav")
        sf.write(str(paths[-1]), pcm, 16000, subtype="PCM_16")
    return paths


def run_runner(r: RunnerBuild, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(r.command(*args), capture_output=True, text=True, timeout=timeout)


def test_runner_help(runner: RunnerBuild):
    res = run_runner(runner, "--help")
    assert res.returncode == 0 and "--model-dir" in res.stdout and "--threads" in res.stdout


def test_fbank_matches_lhotse(runner: RunnerBuild, wavs: list[Path], tmp_path: Path):
    args = [a for w in wavs for a in ("--wav", str(w))]
    res = run_runner(runner, "--fbank-only", "--dump-fbank", str(tmp_path), *args)
    assert res.returncode == 0, res.stderr
    worst = 0.0
    for i, w in enumerate(wavs):
        ref = compute_fbank(load_audio(w)).numpy()
        mine = np.load(tmp_path / f"{i}.npy")
        assert mine.shape == ref.shape
        diff = np.abs(mine - ref)
        worst = max(worst, float(diff.max()))
        assert diff.mean() < 1e-4, (w, diff.mean())
    assert worst < 5e-3, worst  # measured: ~1e-3 max (float32 vs double), ~4e-6 mean


def test_runner_matches_python_executorch_streaming(
    runner: RunnerBuild, exported: Path, wavs: list[Path], tmp_path: Path
):
    out = tmp_path / "out.json"
    args = [a for w in wavs for a in ("--wav", str(w))]
    res = run_runner(
        runner, "--model-dir", str(exported), *args, "--threads", "1", "--json", str(out)
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    # the same transcripts as `asrq transcribe --backend executorch --streaming`
    ref = transcribe(exported, wavs, backend="executorch", streaming=True)
    assert [f["text"] for f in report["files"]] == [t for _, t in ref]
    assert res.stdout.splitlines() == [f"{p}\t{t}" for p, t in ref]
    comp = load_exported(exported, "executorch")
    chunk = report["chunk_frames"]
    for w, f in zip(wavs, report["files"], strict=True):
        feats = load_features(w)
        assert f["tokens"] == stream_decode(comp, feats)
        assert f["tokens"], "random weights still emit tokens on speech"
        assert (
            f["chunks"] == num_chunks(feats.shape[0], chunk) and f["fbank_frames"] == feats.shape[0]
        )
    lat = report["chunk_latency_ms"]
    assert lat["count"] == sum(f["chunks"] for f in report["files"])
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert report["rtf"] > 0 and report["load_ms"] > 0 and report["peak_rss_mb"] > 1
    assert report["threads"] == 1 and report["arch"] == "x86_64"


def test_runner_threads_do_not_change_tokens(
    runner: RunnerBuild, exported: Path, wavs: list[Path], tmp_path: Path
):
    toks = []
    for n in (1, 2):
        out = tmp_path / f"t{n}.json"
        res = run_runner(
            runner,
            "--model-dir",
            str(exported),
            "--wav",
            str(wavs[0]),
            "--threads",
            str(n),
            "--json",
            str(out),
        )
        assert res.returncode == 0, res.stderr
        report = json.loads(out.read_text())
        assert report["threads"] == n
        toks.append(report["files"][0]["tokens"])
    assert toks[0] == toks[1]


def test_text_is_sentencepiece_decode(runner: RunnerBuild, exported: Path):
    """Leading "▁"s dropped only at the start, <unk> as " ⁇ ", other symbols verbatim."""
    from asrq.runtime.transcribe import load_tokenizer

    sp = load_tokenizer(exported)
    n = sp.get_piece_size()
    word = next(
        i for i in range(n) if sp.id_to_piece(i).startswith("▁") and len(sp.id_to_piece(i)) > 1
    )
    rng = np.random.default_rng(0)
    cases = [
        [3, 4],
        [3, 3, 4],
        [2, 4],
        [1, 4],
        [word, 4],
        [4, word],
        [2, word],
        [3, word],
        [4, 2],
        [word, 3],
        [3],
        [1],
    ] + [rng.integers(1, n, size=int(rng.integers(1, 12))).tolist() for _ in range(20)]
    for ids in cases:
        res = run_runner(
            runner, "--model-dir", str(exported), "--decode-ids", ",".join(map(str, ids))
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout[:-1] == sp.decode(ids), ids


def test_runner_errors_name_the_file(
    runner: RunnerBuild, exported: Path, wavs: list[Path], tmp_path: Path
):
    missing = tmp_path / "nope.wav"
    res = run_runner(runner, "--model-dir", str(exported), "--wav", str(missing))
    assert res.returncode == 2 and f"{missing}: cannot open" in res.stderr
    sr8k = tmp_path / "8k.wav"
    sf.write(str(sr8k), np.zeros(8000, dtype=np.int16), 8000, subtype="PCM_16")
    res = run_runner(runner, "--model-dir", str(exported), "--wav", str(sr8k))
    assert res.returncode == 2 and "8000 Hz" in res.stderr and str(sr8k) in res.stderr
    not_wav = tmp_path / "x.wav"
    not_wav.write_text("hello")
    res = run_runner(runner, "--model-dir", str(exported), "--wav", str(not_wav))
    assert res.returncode == 2 and "not a RIFF/WAVE" in res.stderr
    res = run_runner(runner, "--model-dir", str(tmp_path), "--wav", str(wavs[0]))
    assert res.returncode == 2 and "no metadata.json" in res.stderr


def test_aarch64_build_under_qemu_gives_identical_tokens(
    runner: RunnerBuild, exported: Path, wavs: list[Path], tmp_path: Path
):
    for tool, pkg in (
        ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
        ("qemu-aarch64", "qemu-user"),
    ):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (Debian {pkg}; `make system-deps` installs it)")
    arm = build_runner("aarch64")
    assert arm.launcher[0] == "qemu-aarch64"
    elf = arm.binary.read_bytes()[:20]
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183  # EM_AARCH64
    wav = str(wavs[-1])  # the shortest (~2.3 s): qemu is ~100x slower than native
    outs = {}
    for name, r in (("x86_64", runner), ("aarch64", arm)):
        out = tmp_path / f"{name}.json"
        res = run_runner(
            r, "--model-dir", str(exported), "--wav", wav, "--warmup", "0", "--json", str(out)
        )
        assert res.returncode == 0, res.stderr
        outs[name] = json.loads(out.read_text())
    assert outs["aarch64"]["arch"] == "aarch64"
    assert outs["aarch64"]["files"][0]["tokens"] == outs["x86_64"]["files"][0]["tokens"]
    assert outs["aarch64"]["files"][0]["tokens"]
    # (timings under qemu are emulation: not compared, not reported)


def test_bench_backend_native_beside_the_python_runtimes(
    runner: RunnerBuild,
    exported: Path,
    wavs: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """``asrq bench --backend native`` runs the runner in its own process on the bench inputs'
    audio: as many chunks as onnxruntime and ExecuTorch on the same inputs, its memory figures
    from its own /proc, and not measured unless named."""
    from click.testing import CliRunner

    from asrq.bench.native import RUNNER_ENV
    from asrq.cli.bench import bench as bench_cmd

    monkeypatch.setenv(RUNNER_ENV, str(runner.binary))
    out = tmp_path / "bench.json"
    backends = [a for b in ("onnx", "executorch", "native") for a in ("--backend", b)]
    audio = [a for w in wavs[:2] for a in ("--audio", str(w))]
    args = [str(exported), *backends, "--threads", "1", *audio, "--out", str(out)]
    res = CliRunner().invoke(bench_cmd, args)
    assert res.exit_code == 0, res.output
    runs = {r["backend"]: r for r in json.loads(out.read_text())["runs"]}
    n = runs["native"]
    assert n["num_chunks"] == runs["onnx"]["num_chunks"] == runs["executorch"]["num_chunks"]
    assert n["num_chunks"] == n["runner_chunks"] and n["num_chunks"] >= 2
    assert n["child"].startswith("asrq-runner") and n["torch_imported"] is False
    assert "VmHWM reset" in n["memory_method"]
    assert 0 < n["model_peak_bytes"] < n["peak_rss_bytes"] and n["baseline_rss_bytes"] > 0
    assert n["rtf"] > 0 and n["load_ms"] > 0 and n["chunk_latency_ms"]["p90"] > 0
    assert n["runner_rtf_with_fbank"] >= n["rtf"]
    assert set(n["file_bytes"]) == {"encoder_streaming.pte", "predictor.pte", "joiner.pte"}
    assert "native" in res.output
    # a plain `asrq bench` (no --backend) leaves the native runner out
    plain = tmp_path / "plain.json"
    res = CliRunner().invoke(
        bench_cmd, [str(exported), "--threads", "1", "--seconds", "1", "--out", str(plain)]
    )
    assert res.exit_code == 0, res.output
    assert "native" not in {r["backend"] for r in json.loads(plain.read_text())["runs"]}
