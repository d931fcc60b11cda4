"""sherpa-onnx as a benchmark runtime (``asrq bench --backend sherpa-onnx``) and a streaming
transcriber of ``asrq export --sherpa``'s layout (:mod:`asrq.export.sherpa`).

sherpa-onnx computes its own fbank (kaldi-native-fbank) from 16 kHz samples, so its runs take the
inputs' samples, fed in pieces of one chunk (``4C`` fbank frames = ``C * 40`` ms); a chunk's
latency is ``accept_waveform`` of the piece plus every ``decode_stream`` it makes ready (feature
extraction included: a few % of a chunk). After the last piece, :data:`TAIL_PADDING_S` of
silence and ``input_finished`` flush the stream, as sherpa's examples do (sherpa decodes full
windows only); that flush is timed apart (``flush_ms``, all utterances), not as a chunk.

The child (``python -m asrq.bench.sherpa SETTINGS RESULT``) imports numpy and sherpa_onnx only;
its memory figures are measured as the other runtimes' (:mod:`asrq.bench.memory`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from asrq.bench.lean import load_inputs
from asrq.bench.memory import MemoryProbe
from asrq.utils.io import AsrqError, atomic_write_json

#: the benchmark's name for this runtime
NAME = "sherpa-onnx"
SHERPA_DIR = "sherpa"  # = asrq.export.sherpa.SHERPA_DIR (bench does not import export)
TAIL_PADDING_S = 0.66
SAMPLE_RATE = 16000
FILES = ("encoder.onnx", "decoder.onnx", "joiner.onnx")


def sherpa_dir(model_dir: str | Path, meta: dict[str, Any]) -> Path:
    """``<model_dir>/sherpa`` with a clear error when the export has none."""
    if "sherpa" not in meta:
        raise AsrqError(
            f"{model_dir}: no sherpa-onnx layout in this export; re-export with --sherpa"
        )
    return Path(model_dir) / meta["sherpa"].get("dir", SHERPA_DIR)


def open_recognizer(directory: str | Path, threads: int = 1) -> Any:
    """sherpa-onnx's online transducer over ``directory`` (greedy search)."""
    try:
        import sherpa_onnx
    except ImportError as e:
        raise AsrqError(f"sherpa-onnx is not installed ({e}); pip install sherpa-onnx") from e
    d = Path(directory)
    for f in (*FILES, "tokens.txt"):
        if not (d / f).is_file():
            raise AsrqError(f"{d / f}: not found (export with `asrq export ... --sherpa`)")
    return sherpa_onnx.OnlineRecognizer.from_transducer(
        tokens=str(d / "tokens.txt"),
        encoder=str(d / "encoder.onnx"),
        decoder=str(d / "decoder.onnx"),
        joiner=str(d / "joiner.onnx"),
        num_threads=int(threads),
        sample_rate=SAMPLE_RATE,
        feature_dim=80,
        decoding_method="greedy_search",
    )


def read_token_ids(directory: str | Path) -> dict[str, int]:
    """``tokens.txt`` of the layout: symbol -> id, the symbols as sherpa-onnx returns them (a
    leading ``▁`` as a space)."""
    out = {}
    for line in (Path(directory) / "tokens.txt").read_text().splitlines():
        sym, i = line.rsplit(" ", 1)
        out[sym.replace("▁", " ")] = int(i)
    return out


def stream_pieces(
    recognizer: Any,
    samples: np.ndarray,
    piece: int,
    times: list[float] | None = None,
    tail_padding_s: float = TAIL_PADDING_S,
    flush: list[float] | None = None,
) -> Any:
    """Feed ``samples`` in pieces of ``piece`` samples, decoding whatever becomes ready; then
    ``tail_padding_s`` of silence and ``input_finished``. Appends each piece's seconds to
    ``times`` and the flush's to ``flush``. Returns the stream."""
    s = recognizer.create_stream()
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    for k in range(0, len(samples), piece):
        t = time.perf_counter()
        s.accept_waveform(SAMPLE_RATE, samples[k : k + piece])
        while recognizer.is_ready(s):
            recognizer.decode_stream(s)
        if times is not None:
            times.append(time.perf_counter() - t)
    t = time.perf_counter()
    if tail_padding_s > 0:
        s.accept_waveform(SAMPLE_RATE, np.zeros(int(tail_padding_s * SAMPLE_RATE), np.float32))
    s.input_finished()
    while recognizer.is_ready(s):
        recognizer.decode_stream(s)
    if flush is not None:
        flush.append(time.perf_counter() - t)
    return s


def transcribe_ids(
    recognizer: Any,
    ids: dict[str, int],
    samples: np.ndarray,
    chunk_frames: int,
    tail_padding_s: float = TAIL_PADDING_S,
) -> list[int]:
    """Token ids sherpa-onnx decodes from 16 kHz ``samples`` streamed in chunks."""
    piece = 4 * chunk_frames * SAMPLE_RATE // 100
    s = stream_pieces(recognizer, samples, piece, tail_padding_s=tail_padding_s)
    return [ids[t] for t in recognizer.get_result_all(s).tokens]


def run_child(settings: dict[str, Any]) -> dict[str, Any]:
    """One sherpa-onnx run (settings of :class:`asrq.bench.runner.RunSettings`) in this process:
    the raw timings and memory figures of the other children."""
    inputs = load_inputs(settings["features_path"], features=False, samples=True)
    if any(s is None for s in inputs.samples):
        raise AsrqError("sherpa-onnx computes its own features: give inputs with audio")
    meta = json.loads((Path(settings["model_dir"]) / "metadata.json").read_text())
    d = sherpa_dir(settings["model_dir"], meta)
    chunk = int(meta["model"]["chunk_frames"])
    piece = 4 * chunk * SAMPLE_RATE // 100
    t0 = time.perf_counter()
    import sherpa_onnx  # noqa: F401

    import_s = time.perf_counter() - t0
    probe = MemoryProbe()
    probe.baseline_now()
    t0 = time.perf_counter()
    rec = open_recognizer(d, settings["threads"])
    load_s = time.perf_counter() - t0
    warm = settings.get("warmup_chunks", 3) * piece
    stream_pieces(rec, inputs.samples[0][:warm], piece)  # warm-up, not timed
    chunk_s: list[float] = []
    flush_s: list[float] = []
    for samples in inputs.samples:
        stream_pieces(rec, samples, piece, chunk_s, flush=flush_s)
    return {
        "import_s": import_s,
        "load_s": load_s,
        "chunk_s": chunk_s,
        "enc_s": [],
        "flush_s": sum(flush_s),
        "programs": [f"sherpa/{f}" for f in FILES],
        "file_bytes": {f"sherpa/{f}": (d / f).stat().st_size for f in FILES},
        **probe.finish(),
    }


def _main(argv: list[str]) -> int:
    """``python -m asrq.bench.sherpa SETTINGS.json RESULT.json``."""
    settings = json.loads(Path(argv[0]).read_text())
    atomic_write_json(argv[1], run_child(settings))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
