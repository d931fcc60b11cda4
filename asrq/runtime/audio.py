"""Audio files -> 16 kHz mono samples -> 80-bin log-mel fbank, the features the model trained on.

Decoding: ``soundfile`` (libsndfile; >= 1.1 reads MP3 too, so WAV, FLAC, OGG/Vorbis, OPUS and
MP3 all go through it). A file libsndfile cannot read is piped through ``ffmpeg`` or ``sox``
when one is on ``PATH``. Stereo is mixed down by averaging channels; other rates are resampled
with ``torchaudio.functional.resample`` (windowed sinc).

Features: lhotse's ``Fbank(FbankConfig(num_mel_bins=80))`` -- the same extractor that
``asrq data prepare`` runs through ``CutSet.compute_and_store_features``, so training and
inference features match (up to the training store's lilcom compression).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from asrq.utils.io import AsrqError

SAMPLE_RATE = 16000
NUM_MEL_BINS = 80


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0], int(sr)


def _read_with_tool(path: Path, sample_rate: int) -> tuple[np.ndarray, int] | None:
    """Decode with ffmpeg or sox to mono float32 at ``sample_rate``; None if neither is usable."""
    cmds = []
    if shutil.which("ffmpeg"):
        cmds.append(
            [
                "ffmpeg",
                "-nostdin",
                "-v",
                "error",
                "-i",
                str(path),
                "-f",
                "f32le",
                "-ac",
                "1",
                "-ar",
                str(sample_rate),
                "-",
            ]
        )
    if shutil.which("sox"):
        cmds.append(
            [
                "sox",
                "-V1",
                str(path),
                "-t",
                "raw",
                "-e",
                "floating-point",
                "-b",
                "32",
                "-c",
                "1",
                "-r",
                str(sample_rate),
                "-",
            ]
        )
    for cmd in cmds:
        try:
            res = subprocess.run(cmd, capture_output=True, check=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
            continue
        return np.frombuffer(res.stdout, dtype="<f4").copy(), sample_rate
    return None


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Read an audio file as mono float32 samples at ``sample_rate``: ``(S,)``.

    Raises :class:`AsrqError` naming the file when it is missing, unreadable or empty.
    """
    path = Path(path)
    if not path.exists():
        raise AsrqError(f"{path}: audio file not found")
    if not path.is_file():
        raise AsrqError(f"{path}: not a file")
    try:
        samples, sr = _read_soundfile(path)
    except Exception as sf_error:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        decoded = _read_with_tool(path, sample_rate)
        if decoded is None:
            raise AsrqError(
                f"{path}: cannot read audio ({sf_error}); ffmpeg/sox could not decode it either"
            ) from sf_error
        samples, sr = decoded
    if samples.size == 0:
        raise AsrqError(f"{path}: audio file holds no samples")
    if not np.isfinite(samples).all():
        raise AsrqError(f"{path}: audio holds NaN or infinite samples")
    wav = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if sr != sample_rate:
        import torchaudio.functional as AF

        wav = AF.resample(wav, sr, sample_rate)
    return wav


@functools.lru_cache(maxsize=4)
def _extractor(num_mel_bins: int):
    from lhotse import Fbank, FbankConfig

    return Fbank(FbankConfig(num_mel_bins=num_mel_bins))


def compute_fbank(
    samples: Tensor, sample_rate: int = SAMPLE_RATE, num_mel_bins: int = NUM_MEL_BINS
) -> Tensor:
    """Log-mel fbank of mono samples ``(S,)`` -> ``(T, num_mel_bins)`` float32, 10 ms hop."""
    feats = _extractor(num_mel_bins).extract(
        samples.numpy().astype(np.float32, copy=False), sample_rate
    )
    return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))


def load_features(
    path: str | Path, sample_rate: int = SAMPLE_RATE, num_mel_bins: int = NUM_MEL_BINS
) -> Tensor:
    """:func:`load_audio` + :func:`compute_fbank`: an audio file -> ``(T, F)`` fbank."""
    return compute_fbank(load_audio(path, sample_rate), sample_rate, num_mel_bins)
