"""Long audio in bounded memory: cut a file at its silences, decode each segment alone.

Full-context decoding of a whole file needs memory that grows with its length (attention is
quadratic in frames: a 10-minute file took 17 GB). :func:`transcribe_long` instead

1. streams the file in blocks (``soundfile.SoundFile.blocks``, float32, mono mix-down) and
   keeps only the log energy of every 10 ms frame (a one-hour file: 360,000 floats);
2. cuts it at the middle of every pause of at least ``min_silence_s`` (frames more than
   ``SILENCE_DB`` below the loud end of the file's energy range, see :func:`silence_threshold`);
   a stretch of speech longer than ``max_segment_s`` is cut at its quietest frame in the last
   ``FORCED_CUT_SEARCH_S`` seconds before the limit; stretches that are all silence are skipped;
3. reads one segment at a time (``SoundFile.seek`` + ``read``), resamples it to 16 kHz when
   needed, computes its fbank and hands it to the decoder; texts are joined with spaces.

Why silences rather than fixed overlapping windows: a segment that starts and ends in a pause
is exactly what a short file is (an utterance with a little silence around it), so each
segment decodes to the same text as that utterance on its own, and there is no overlap to
reconcile (fixed windows cut words in two and need a merge of the overlapping hypotheses).
Peak memory is the model plus one segment, whatever the file's length.

Files soundfile cannot open (those decoded through ffmpeg/sox by :mod:`asrq.runtime.audio`)
are not segmented here; :func:`should_segment` says which files take this path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from asrq.runtime.audio import NUM_MEL_BINS, SAMPLE_RATE, compute_fbank
from asrq.utils.io import AsrqError

LONG_AUDIO_S = 30.0  # full-context files longer than this are segmented
MAX_SEGMENT_S = 20.0
MIN_SILENCE_S = 0.4
MIN_SEGMENT_S = 0.3  # shorter speech stretches join their neighbour
FORCED_CUT_SEARCH_S = 5.0
SILENCE_DB = 35.0  # silence: this far below the 95th percentile of frame energies
FLOOR_DB = -80.0  # ... and always below this (dB re full scale): a silent file has no speech
BLOCK_S = 10.0  # seconds read at once in the energy pass
FRAME_S = 0.01


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, end)`` of the file, at the file's own sample rate."""

    start: int
    end: int
    sample_rate: int

    @property
    def seconds(self) -> tuple[float, float]:
        return self.start / self.sample_rate, self.end / self.sample_rate


def _open(path: str | Path):
    import soundfile as sf

    try:
        return sf.SoundFile(str(path))
    except Exception as e:  # LibsndfileError / RuntimeError / TypeError
        raise AsrqError(f"{path}: cannot read audio in blocks ({e})") from e


def audio_seconds(path: str | Path) -> float | None:
    """Duration of ``path`` from its header, or None when soundfile cannot open it."""
    try:
        with _open(path) as f:
            return f.frames / f.samplerate if f.frames > 0 else None
    except AsrqError:
        return None


def should_segment(path: str | Path, long_audio_s: float = LONG_AUDIO_S) -> bool:
    """Whether full-context transcription of ``path`` goes through :func:`transcribe_long`:
    soundfile can read it in blocks and it is longer than ``long_audio_s`` seconds."""
    seconds = audio_seconds(path)
    return seconds is not None and seconds > long_audio_s


def frame_energies(path: str | Path, block_s: float = BLOCK_S) -> tuple[np.ndarray, int, int]:
    """Log energy (dB) of every 10 ms frame of ``path``, reading it in blocks.

    Returns ``(energies (F,) float32, frame length in samples, sample rate)``; a last partial
    frame is dropped. Memory: one block of samples plus the energies.
    """
    with _open(path) as f:
        sr = f.samplerate
        hop = max(1, round(sr * FRAME_S))
        block = hop * max(1, round(block_s / FRAME_S))  # whole frames per block
        out: list[np.ndarray] = []
        for data in f.blocks(blocksize=block, dtype="float32", always_2d=True):  # (S, C)
            x = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
            n = len(x) // hop
            if n == 0:
                continue
            frames = x[: n * hop].reshape(n, hop)
            power = np.einsum("ij,ij->i", frames, frames) / hop
            out.append((10.0 * np.log10(power + 1e-10)).astype(np.float32))
    if not out:
        raise AsrqError(f"{path}: audio file holds no samples")
    energies = np.concatenate(out)
    if not np.isfinite(energies).all():
        raise AsrqError(f"{path}: audio holds NaN or infinite samples")
    return energies, hop, sr


def silence_threshold(energies: np.ndarray, silence_db: float = SILENCE_DB) -> float:
    """Frames below this (dB) are silence: ``silence_db`` under the 95th percentile of the
    frame energies (the loud end of speech), so it follows the recording level, and at least
    :data:`FLOOR_DB`."""
    return max(float(np.percentile(energies, 95)) - silence_db, FLOOR_DB)


def find_segments(
    energies: np.ndarray,
    hop: int,
    sample_rate: int,
    max_segment_s: float = MAX_SEGMENT_S,
    min_silence_s: float = MIN_SILENCE_S,
    silence_db: float = SILENCE_DB,
) -> list[Segment]:
    """Cut points from frame energies (see the module docstring) -> speech segments in order.

    Every segment is at most ``max_segment_s`` long; segments that hold no frame above the
    silence threshold are left out.
    """
    if max_segment_s <= FORCED_CUT_SEARCH_S:
        raise AsrqError(f"max_segment_s must be > {FORCED_CUT_SEARCH_S}, got {max_segment_s}")
    n = len(energies)
    loud = energies >= silence_threshold(energies, silence_db)
    min_sil = max(1, round(min_silence_s / FRAME_S))
    max_len = round(max_segment_s / FRAME_S)
    search = round(FORCED_CUT_SEARCH_S / FRAME_S)

    # cuts at the middle of each pause of >= min_sil silent frames (file start/end are cuts)
    cuts = [0]
    i = 0
    while i < n:
        if loud[i]:
            i += 1
            continue
        j = i
        while j < n and not loud[j]:
            j += 1
        if j - i >= min_sil and 0 < i and j < n:
            cuts.append((i + j) // 2)
        i = j
    cuts.append(n)

    # speech stretches longer than max_len: cut at the quietest frame before the limit
    bounded = [0]
    for end in cuts[1:]:
        while end - bounded[-1] > max_len:
            start = bounded[-1]
            lo = start + max_len - search
            bounded.append(lo + int(np.argmin(energies[lo : start + max_len])))
        bounded.append(end)

    segments: list[Segment] = []
    for a, b in zip(bounded[:-1], bounded[1:], strict=True):
        if b <= a or not loud[a:b].any():
            continue
        if segments and (b - a) * FRAME_S < MIN_SEGMENT_S:
            last = segments[-1]
            if (b * hop - last.start) <= max_len * hop:  # a blip: join the previous segment
                segments[-1] = Segment(last.start, b * hop, sample_rate)
                continue
        segments.append(Segment(a * hop, b * hop, sample_rate))
    return segments


def iter_segment_features(
    path: str | Path, segments: list[Segment], num_mel_bins: int = NUM_MEL_BINS
) -> Iterator[tuple[Segment, Tensor]]:
    """Read each segment of ``path`` alone (mono, resampled to 16 kHz) -> its fbank ``(T, F)``."""
    with _open(path) as f:
        for seg in segments:
            f.seek(seg.start)
            data = f.read(seg.end - seg.start, dtype="float32", always_2d=True)  # (S, C)
            x = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
            wav = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            if f.samplerate != SAMPLE_RATE:
                import torchaudio.functional as AF

                wav = AF.resample(wav, f.samplerate, SAMPLE_RATE)
            yield seg, compute_fbank(wav, SAMPLE_RATE, num_mel_bins)


def transcribe_long(
    path: str | Path,
    decode_tokens: Callable[[Tensor], list[int]],
    detokenize: Callable[[list[int]], str],
    max_segment_s: float = MAX_SEGMENT_S,
    min_silence_s: float = MIN_SILENCE_S,
) -> str:
    """Text of a long file: its segments (:func:`find_segments`) decoded one at a time by
    ``decode_tokens`` (fbank ``(T, 80)`` -> token ids) and ``detokenize``, joined with spaces."""
    energies, hop, sr = frame_energies(path)
    segments = find_segments(energies, hop, sr, max_segment_s, min_silence_s)
    texts = [
        detokenize([int(t) for t in decode_tokens(feats)])
        for _, feats in iter_segment_features(path, segments)
    ]
    return " ".join(t.strip() for t in texts if t.strip())
