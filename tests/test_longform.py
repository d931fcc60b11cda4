"""Long audio: block-wise energies, cuts at pauses, segment-by-segment full-context decoding,
and (slow) a 60-minute file transcribed with full context under 2 GB peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asrq.runtime import longform
from asrq.runtime.audio import load_features
from asrq.utils.io import AsrqError

SR = 16000
PAUSE_S = 0.8


def _utterances(tiny_data) -> list[np.ndarray]:
    flacs = sorted(tiny_data.corpus_dir.rglob("*.flac"))
    return [sf.read(str(f), dtype="float32")[0] for f in flacs]


def _write_long(
    path: Path, utts: list[np.ndarray], repeats: int = 1, noise_db: float | None = None
) -> list[tuple[int, int]]:
    """utts x repeats with PAUSE_S of silence (or low noise) between them, written block by
    block; returns each utterance's (start, end) sample span."""
    pause = np.zeros(int(PAUSE_S * SR), dtype=np.float32)
    rng = np.random.default_rng(0)
    spans, pos = [], 0
    with sf.SoundFile(str(path), "w", SR, 1, subtype="PCM_16") as f:
        for _ in range(repeats):
            for u in utts:
                for chunk, is_utt in ((u, True), (pause, False)):
                    if noise_db is not None:
                        chunk = chunk + 10 ** (noise_db / 20) * rng.standard_normal(len(chunk))
                    f.write(chunk.astype(np.float32))
                    if is_utt:
                        spans.append((pos, pos + len(chunk)))
                    pos += len(chunk)
    return spans


def test_frame_energies_in_blocks_match_one_read(tmp_path: Path):
    x = np.random.default_rng(1).standard_normal(SR * 7 + 123).astype(np.float32) * 0.1
    sf.write(tmp_path / "x.wav", x, SR, subtype="FLOAT")
    whole, hop, sr = longform.frame_energies(tmp_path / "x.wav", block_s=100.0)
    small, _, _ = longform.frame_energies(tmp_path / "x.wav", block_s=0.37)
    assert (hop, sr) == (160, SR) and len(whole) == len(x) // 160
    np.testing.assert_allclose(small, whole, rtol=0, atol=1e-4)
    frames = x[: len(whole) * 160].reshape(-1, 160).astype(np.float64)
    ref = 10 * np.log10((frames**2).mean(1) + 1e-10)
    np.testing.assert_allclose(whole, ref, atol=1e-3)


@pytest.mark.parametrize("noise_db", [None, -60.0])
def test_segments_are_the_utterances(tiny_data, tmp_path: Path, noise_db: float | None):
    """A file of utterances with pauses between them is cut once per pause: every segment holds
    exactly one utterance, whole (digital silence or a -60 dB noise floor)."""
    utts = _utterances(tiny_data)
    spans = _write_long(tmp_path / "long.flac", utts, noise_db=noise_db)
    energies, hop, sr = longform.frame_energies(tmp_path / "long.flac")
    segs = longform.find_segments(energies, hop, sr)
    assert len(segs) == len(spans)
    bounds = [(0, 0), *spans, (10**12, 10**12)]
    for i, seg in enumerate(segs, start=1):
        (_, prev_end), (a, b), (next_start, _) = bounds[i - 1], bounds[i], bounds[i + 1]
        assert prev_end <= seg.start <= a and b <= seg.end <= next_start


def test_forced_cuts_bound_segment_length():
    """50 s without a pause: cut at the quietest frames, no segment over max_segment_s, the
    pieces tile the whole stretch."""
    rng = np.random.default_rng(0)
    energies = (-20 + 3 * rng.standard_normal(5000)).astype(np.float32)
    energies[[1700, 3400]] = -32  # quiet dips (not silence) inside the allowed window
    segs = longform.find_segments(energies, 160, SR, max_segment_s=20.0)
    assert [s.start // 160 for s in segs] == [0, 1700, 3400]
    assert segs[-1].end == 5000 * 160
    assert all(s.end - s.start <= 20 * SR for s in segs)
    assert longform.find_segments(np.full(3000, -100.0, np.float32), 160, SR) == []
    with pytest.raises(AsrqError, match="max_segment_s"):
        longform.find_segments(energies, 160, SR, max_segment_s=3.0)


def test_segment_features_match_short_file(tmp_path: Path):
    """Reading a segment from a 44.1 kHz stereo file gives the features of that stretch read
    on its own (the short-file path of asrq.runtime.audio)."""
    rng = np.random.default_rng(2)
    x = (0.1 * rng.standard_normal((44100 * 6, 2))).astype(np.float32)
    sf.write(tmp_path / "st.wav", x, 44100, subtype="FLOAT")
    seg = longform.Segment(44100 * 2, 44100 * 4, 44100)
    ((got_seg, feats),) = list(longform.iter_segment_features(tmp_path / "st.wav", [seg]))
    sf.write(tmp_path / "piece.wav", x[seg.start : seg.end], 44100, subtype="FLOAT")
    torch.testing.assert_close(feats, load_features(tmp_path / "piece.wav"))
    assert got_seg.seconds == (2.0, 4.0)
    assert not longform.should_segment(tmp_path / "st.wav")  # 6 s: the short-file path
    assert longform.should_segment(tmp_path / "st.wav", long_audio_s=5.0)
    assert not longform.should_segment(tmp_path / "missing.wav")


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny (random) model exported to ONNX only (ExecuTorch takes minutes to build)."""
    from asrq.export.pipeline import export_model
    from asrq.testing.models import make_tiny_checkpoint

    base = tmp_path_factory.getbasetemp() / "asrq_tiny_export_onnx"
    out = base / "model"
    if not (out / "metadata.json").is_file():
        export_model(make_tiny_checkpoint(base / "tiny.pt"), out, onnx=True, executorch=False)
    return out


def test_long_file_text_is_the_segments_texts(tiny_data, onnx_model: Path, tmp_path: Path):
    """`asrq transcribe` full context on a 2-minute file goes segment by segment and gives, per
    segment, the text of that segment as a short file of its own."""
    from asrq.runtime.transcribe import transcribe

    utts = _utterances(tiny_data)
    long = tmp_path / "long.flac"
    _write_long(long, utts, repeats=3)
    assert longform.should_segment(long)
    energies, hop, sr = longform.frame_energies(long)
    segs = longform.find_segments(energies, hop, sr)
    assert len(segs) == 3 * len(utts)
    audio, _ = sf.read(str(long), dtype="float32")
    shorts = []
    for i, s in enumerate(segs):
        shorts.append(tmp_path / f"seg{i}.flac")
        sf.write(shorts[-1], audio[s.start : s.end], SR, subtype="PCM_16")
    short_texts = [t for _, t in transcribe(onnx_model, shorts)]
    assert sum(len(t.split()) for t in short_texts) > 0  # the random model does say things
    ((_, long_text),) = transcribe(onnx_model, [long])
    expected = " ".join(t for t in short_texts if t)
    assert long_text == expected


CHILD = """
import json, resource, sys, time
from asrq.runtime.transcribe import transcribe
t = time.time()
((_, text),) = transcribe(sys.argv[1], [sys.argv[2]], threads=1)
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "words": len(text.split()), "seconds": time.time() - t}))
"""


@pytest.mark.slow
def test_one_hour_full_context_under_2gb(tiny_data, onnx_model: Path, tmp_path: Path):
    """A generated 60-minute FLAC transcribed with full context in a child process: peak RSS
    (the child's own ru_maxrss) stays under 2 GB."""
    utts = _utterances(tiny_data)
    round_s = sum(len(u) for u in utts) / SR + PAUSE_S * len(utts)
    path = tmp_path / "hour.flac"
    _write_long(path, utts, repeats=int(np.ceil(3600 / round_s)))
    assert sf.info(str(path)).duration >= 3600
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(onnx_model), str(path)],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"60-min file: peak RSS {out['maxrss_kb'] / 1024:.0f} MB, {out['seconds']:.0f} s")
    assert out["words"] > 0
    assert out["maxrss_kb"] < 2 * 1024 * 1024
