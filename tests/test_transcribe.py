"""Audio loading (formats, resampling, mix-down, clear errors) and ``asrq transcribe`` with the
exported tiny model on every real recording under /work/shared/data/real (both backends)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from asrq.cli.transcribe import transcribe as transcribe_cmd
from asrq.runtime.audio import compute_fbank, load_audio, load_features
from asrq.utils.io import AsrqError
from tests.shared import shared_tiny_export

REAL = Path("/work/shared/data/real")
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg"}
REAL_FILES = sorted(p for p in REAL.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_export(tmp_path_factory)


# --------------------------------------------------------------------------------------------
# fast: audio
# --------------------------------------------------------------------------------------------
def test_real_files_cover_the_formats():
    assert {p.suffix.lower() for p in REAL_FILES} >= {".wav", ".flac", ".mp3"}


def test_load_audio_resamples_22k_wav_to_16k():
    path = REAL / "extra" / "LJ002-0020.wav"
    raw, sr = sf.read(str(path), dtype="float32")
    assert sr == 22050
    wav = load_audio(path)
    assert wav.dtype == torch.float32 and wav.dim() == 1
    assert abs(wav.numel() - round(raw.shape[0] * 16000 / 22050)) <= 1
    feats = compute_fbank(wav)
    assert feats.shape == (round(wav.numel() / 160), 80)


def test_load_audio_reads_mp3_and_mixes_stereo(tmp_path: Path):
    mp3 = load_audio(REAL / "extra" / "common_voice_en_651325.mp3")
    assert mp3.numel() > 16000 and torch.isfinite(mp3).all()
    t = np.arange(8000) / 8000
    left, right = np.sin(2 * np.pi * 300 * t), 0.5 * np.sin(2 * np.pi * 300 * t)
    sf.write(
        tmp_path / "stereo.wav",
        np.stack([left, right], 1).astype(np.float32),
        8000,
        subtype="FLOAT",
    )
    mono = load_audio(tmp_path / "stereo.wav")
    assert mono.dim() == 1 and abs(mono.numel() - 16000) <= 1
    assert mono.abs().max() == pytest.approx(0.75, abs=0.05)  # mean of the two channels


def test_load_audio_errors_name_the_file(tmp_path: Path):
    with pytest.raises(AsrqError, match="missing.wav: audio file not found"):
        load_audio(tmp_path / "missing.wav")
    bad = tmp_path / "garbage.wav"
    bad.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AsrqError, match="garbage.wav: cannot read audio"):
        load_audio(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AsrqError, match="empty.wav: audio file holds no samples"):
        load_audio(empty)


def test_features_match_lhotse_fbank_on_the_same_samples():
    from lhotse import Fbank, FbankConfig

    wav = load_audio(REAL / "extra" / "2412-153948-0001.flac")
    ref = Fbank(FbankConfig(num_mel_bins=80)).extract(wav.numpy(), 16000)
    torch.testing.assert_close(
        load_features(REAL / "extra" / "2412-153948-0001.flac"), torch.from_numpy(ref)
    )


def test_transcribe_help():
    res = CliRunner().invoke(transcribe_cmd, ["--help"])
    assert res.exit_code == 0
    assert (
        "<path><TAB><text>" in res.output
        and "--streaming" in res.output
        and "--backend" in res.output
    )


def test_transcribe_bad_model_dir_is_a_clear_error(tmp_path: Path):
    res = CliRunner().invoke(transcribe_cmd, [str(tmp_path / "nomodel"), str(REAL_FILES[0])])
    assert res.exit_code == 2 and "nomodel: model directory not found" in res.output


# --------------------------------------------------------------------------------------------
# slow: the exported tiny model
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_transcribe_every_real_file(exported: Path, backend: str):
    res = CliRunner().invoke(
        transcribe_cmd, [str(exported), *map(str, REAL_FILES), "--backend", backend]
    )
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert len(lines) == len(REAL_FILES)
    for line, path in zip(lines, REAL_FILES, strict=True):
        p, _, text = line.partition("\t")
        assert p == str(path) and text  # random weights: garbage text, but some


@pytest.mark.slow
def test_transcribe_streaming_and_beam_search(exported: Path):
    files = [REAL / "extra" / "LJ002-0020.wav", REAL / "extra" / "common_voice_en_651325.mp3"]
    for backend in ("onnx", "executorch"):
        res = CliRunner().invoke(
            transcribe_cmd,
            [
                str(exported),
                *map(str, files),
                "--backend",
                backend,
                "--streaming",
                "--method",
                "modified_beam_search",
                "--beam",
                "3",
            ],
        )
        assert res.exit_code == 0, res.output
        assert [line.split("\t")[0] for line in res.stdout.splitlines()] == list(map(str, files))


@pytest.mark.slow
def test_transcribe_missing_file_exits_nonzero_naming_it(exported: Path, tmp_path: Path):
    missing = tmp_path / "nope.flac"
    cmd = [
        sys.executable,
        "-m",
        "asrq.cli.transcribe",
        str(exported),
        str(REAL_FILES[0]),
        str(missing),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert f"error: {missing}: audio file not found" in proc.stderr
    assert proc.stdout == ""  # checked before decoding anything


@pytest.mark.slow
def test_transcribe_and_bench_read_the_metadata_once(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """``metadata.json`` is read once per transcription / in-process benchmark and passed down."""
    from asrq.bench.runner import run_bench
    from asrq.runtime import model_dir
    from asrq.runtime.transcribe import transcribe

    reads: list[Path] = []
    real = model_dir.read_metadata

    def counting(path):
        reads.append(Path(path))
        return real(path)

    monkeypatch.setattr(model_dir, "read_metadata", counting)
    wav = REAL / "extra" / "LJ002-0020.wav"
    for method in ("greedy", "modified_beam_search"):
        reads.clear()
        assert transcribe(exported, [wav], "onnx", True, method)[0][1]
        assert reads == [exported]
    reads.clear()
    run_bench(
        exported,
        ["onnx"],
        [1],
        synthetic_seconds=1.0,
        out=tmp_path / "b.json",
        isolate=False,
        plot=False,
    )
    assert reads == [exported]
