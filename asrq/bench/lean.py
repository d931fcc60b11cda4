"""The onnxruntime streaming run of ``asrq bench`` in a process without torch.

A device runs the programs with onnxruntime and nothing else, so the benchmark's ONNX child
(``python -m asrq.bench.lean SETTINGS RESULT``; the RNN-T entry of
:data:`asrq.bench.steps.STREAMING_STEPS` names it as its ``onnx_child``) holds only numpy and
onnxruntime: the inputs
come as ``.npz`` (:func:`save_inputs`), the sessions are those of
:class:`asrq.runtime.backends.OnnxPrograms` (same options), and the RNN-T streaming step (the
streaming encoder on windows of ``4C + 3`` fbank frames, then greedy search with one symbol per
frame) is written here in numpy. ``tests/test_bench.py`` checks it emits the same token ids as
the torch path (:func:`asrq.decode.streaming.stream_decode`).

Nothing here may import torch (``tests/test_bench.py`` checks ``torch_imported`` is false).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asrq.bench.memory import MemoryProbe
from asrq.utils.io import atomic_path, atomic_write_json

#: lhotse's padding value for log-mel features (``asrq.runtime.model_dir.LOG_EPSILON``).
LOG_EPSILON = float(np.log(1e-10))
SUBSAMPLING = 4
RIGHT_CONTEXT_FRAMES = 3


@dataclass
class Inputs:
    """Benchmark inputs as numpy: per utterance a label, fbank ``(T, F)``, its duration and,
    where known, 16 kHz samples ``(S,)`` (the runtimes that compute their own features need
    them)."""

    labels: list[str]
    feats: list[np.ndarray]
    seconds: list[float]
    samples: list[np.ndarray | None]


def save_inputs(path: str | Path, inputs: Inputs) -> Path:
    """Write ``inputs`` to one ``.npz`` (arrays ``feats_i``, ``samples_i``, a JSON header)."""
    arrays: dict[str, np.ndarray] = {}
    for i, (f, s) in enumerate(zip(inputs.feats, inputs.samples, strict=True)):
        arrays[f"feats_{i}"] = np.ascontiguousarray(f, dtype=np.float32)
        if s is not None:
            arrays[f"samples_{i}"] = np.ascontiguousarray(s, dtype=np.float32)
    header = {"labels": inputs.labels, "seconds": inputs.seconds}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_inputs(path: str | Path, features: bool = True, samples: bool = False) -> Inputs:
    """The inputs :func:`save_inputs` wrote: the fbank and/or the samples (a child reads only
    what its runtime takes; the other list holds empty arrays / None)."""
    with np.load(path) as z:
        header = json.loads(bytes(z["header"]).decode())
        n = len(header["labels"])
        empty = np.zeros((0, 0), np.float32)
        feats = [z[f"feats_{i}"] if features else empty for i in range(n)]
        wavs = [z[f"samples_{i}"] if samples and f"samples_{i}" in z else None for i in range(n)]
    return Inputs(header["labels"], feats, [float(s) for s in header["seconds"]], wavs)


# --------------------------------------------------------------------------------------------
# the RNN-T streaming step in numpy
# --------------------------------------------------------------------------------------------
def encoder_frames(t: int) -> int:
    """Encoder frames of ``t`` fbank frames (as :func:`asrq.decode.streaming.encoder_frames`)."""
    return max(0, ((t - 1) // 2 - 1) // 2)


def iter_windows(feats: np.ndarray, chunk_frames: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """fbank ``(T, F)`` -> windows ``x (1, 4C + 3, F)``, ``x_lens (1,)``, padded past the end with
    :data:`LOG_EPSILON` (as :func:`asrq.decode.streaming.iter_windows`)."""
    t = feats.shape[0]
    w, hop = SUBSAMPLING * chunk_frames + RIGHT_CONTEXT_FRAMES, SUBSAMPLING * chunk_frames
    k_max = -(-encoder_frames(t) // chunk_frames)
    need = hop * max(k_max - 1, 0) + w
    if t < need:
        pad = np.full((need - t, feats.shape[1]), LOG_EPSILON, dtype=np.float32)
        feats = np.concatenate([feats, pad])
    for k in range(k_max):
        s = hop * k
        yield feats[None, s : s + w], np.array([min(max(t - s, 0), w)], dtype=np.int64)


def zero_states(meta: dict[str, Any]) -> list[np.ndarray]:
    """The streaming encoder's zero states at batch 1, from ``meta["model"]["states"]`` (older
    exports: the Conformer's ``state_shapes``)."""
    m = meta["model"]
    if "states" in m:
        return [np.zeros(d["shape"], dtype=np.dtype(d["dtype"])) for d in m["states"]]
    s = m["state_shapes"]
    return [
        np.zeros(s["attn_cache"], np.float32),
        np.zeros(s["conv_cache"], np.float32),
        np.zeros(s["processed"], np.int64),
    ]


class OnnxRnntStream:
    """Streaming RNN-T over three onnxruntime sessions, numpy only: ``encode_chunk`` then
    ``advance`` (greedy, one symbol per frame, as :func:`asrq.decode.search.greedy_advance`)."""

    def __init__(self, sessions: dict[str, Any], meta: dict[str, Any]) -> None:
        m = meta["model"]
        self.enc, self.pred, self.join = (
            sessions["encoder_streaming"],
            sessions["predictor"],
            sessions["joiner"],
        )
        self.meta = meta
        self.blank = int(m["blank_id"])
        self.context_size = int(m["context_size"])
        self.chunk_frames = int(m["chunk_frames"])
        self._enc_in = [i.name for i in self.enc.get_inputs()]
        self._pred_in = self.pred.get_inputs()[0].name
        self._join_in = [i.name for i in self.join.get_inputs()]
        self.reset()

    def reset(self) -> None:
        """A new utterance: zero states, the initial context ``[-1, ..., -1, blank]``."""
        self.states = zero_states(self.meta)
        self.hyp = [-1] * (self.context_size - 1) + [self.blank]
        self.pred_out = self._predict()

    def _predict(self) -> np.ndarray:
        ctx = np.array([self.hyp[-self.context_size :]], dtype=np.int64)
        return self.pred.run(None, {self._pred_in: ctx})[0]

    def encode_chunk(self, x: np.ndarray, x_lens: np.ndarray) -> tuple[np.ndarray, int]:
        """One window -> (encoder frames ``(1, C, J)``, valid frames); updates the states."""
        feeds = dict(zip(self._enc_in, [x, x_lens, *self.states], strict=True))
        out = self.enc.run(None, feeds)
        self.states = out[2:]
        return out[0], int(out[1][0])

    def advance(self, enc: np.ndarray, valid: int) -> None:
        """Greedy search over the chunk's ``valid`` frames."""
        for t in range(valid):
            logits = self.join.run(
                None, dict(zip(self._join_in, [enc[:, t], self.pred_out], strict=True))
            )[0]
            y = int(logits[0].argmax())
            if y != self.blank:
                self.hyp.append(y)
                self.pred_out = self._predict()

    @property
    def tokens(self) -> list[int]:
        return self.hyp[self.context_size :]


def open_sessions(model_dir: str | Path, threads: int, names: tuple[str, ...]) -> dict[str, Any]:
    """onnxruntime sessions of ``names`` with the options of ``asrq transcribe``."""
    from asrq.runtime.backends import OnnxPrograms

    programs = OnnxPrograms(model_dir, threads)
    return {n: programs.load(n) for n in names}


def decode(model_dir: str | Path, feats: np.ndarray, threads: int = 1) -> list[int]:
    """Token ids of one utterance (fbank ``(T, F)``) streamed through the ONNX programs."""
    meta = json.loads((Path(model_dir) / "metadata.json").read_text())
    stream = OnnxRnntStream(
        open_sessions(model_dir, threads, ("encoder_streaming", "predictor", "joiner")), meta
    )
    for x, x_lens in iter_windows(np.asarray(feats, np.float32), stream.chunk_frames):
        stream.advance(*stream.encode_chunk(x, x_lens))
    return stream.tokens


# --------------------------------------------------------------------------------------------
# the benchmark child
# --------------------------------------------------------------------------------------------
def run_lean(settings: dict[str, Any]) -> dict[str, Any]:
    """One onnxruntime run (settings of :class:`asrq.bench.runner.RunSettings`) in this
    process, numpy only: the timing and memory figures of :func:`asrq.bench.runner.run_once`."""
    inputs = load_inputs(settings["features_path"])
    meta = json.loads((Path(settings["model_dir"]) / "metadata.json").read_text())
    t0 = time.perf_counter()
    import onnxruntime  # noqa: F401

    import_s = time.perf_counter() - t0
    probe = MemoryProbe()
    probe.baseline_now()
    names = ("encoder_streaming", "predictor", "joiner")
    t0 = time.perf_counter()
    stream = OnnxRnntStream(open_sessions(settings["model_dir"], settings["threads"], names), meta)
    load_s = time.perf_counter() - t0
    first = iter_windows(inputs.feats[0], stream.chunk_frames)
    for k, (x, x_lens) in enumerate(first):  # warm-up, not timed
        if k >= settings.get("warmup_chunks", 3):
            break
        stream.advance(*stream.encode_chunk(x, x_lens))
    chunk_s: list[float] = []
    enc_s: list[float] = []
    for f in inputs.feats:
        stream.reset()
        for x, x_lens in iter_windows(f, stream.chunk_frames):
            t = time.perf_counter()
            enc, valid = stream.encode_chunk(x, x_lens)
            t_enc = time.perf_counter()
            stream.advance(enc, valid)
            chunk_s.append(time.perf_counter() - t)
            enc_s.append(t_enc - t)
    return {
        "import_s": import_s,
        "load_s": load_s,
        "chunk_s": chunk_s,
        "enc_s": enc_s,
        "programs": list(names),
        **probe.finish(),
    }


def _main(argv: list[str]) -> int:
    """``python -m asrq.bench.lean SETTINGS.json RESULT.json``."""
    settings = json.loads(Path(argv[0]).read_text())
    atomic_write_json(argv[1], run_lean(settings))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
