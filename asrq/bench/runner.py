"""Streaming benchmark of an exported model on this host (``asrq bench``).

What one run measures (one backend, one thread count), simulating a device that receives audio
in chunks of ``C`` encoder frames (``C * 40`` ms):

- **chunk latency**: wall time of one streaming step = the exported streaming encoder on a window
  of ``4C + 3`` fbank frames + greedy search over the chunk's ``C`` frames (predictor + joiner
  calls); p50 / p90 / p99 / mean / max in ms. fbank extraction is not included (it is computed
  beforehand, once for all runs; on a device it runs incrementally and is cheap).
- **RTF**: sum of chunk latencies / audio duration.
- **load time**: creating the runtime sessions / loading the programs (streaming encoder,
  predictor, joiner); importing the runtime library is reported apart (``import_ms``).
- **memory** (:mod:`asrq.bench.memory`): each run executes in a fresh child process that holds
  only what its runtime needs -- the onnxruntime child imports numpy and onnxruntime, not torch
  (:mod:`asrq.bench.lean`); the ExecuTorch child needs torch (its extension links libtorch).
  ``model_peak_bytes``: the resident high-water mark during loading + streaming above the
  baseline taken once the inputs are prepared and the runtime library is imported (the figure
  the chart plots and ``asrq search --max-mb`` can budget); ``peak_rss_bytes``: the child's
  absolute peak; ``memory_method`` says how they were measured.
- **file sizes**: bytes per program and in total, from the export.

Inputs: ``--audio`` files, or the cuts of a lhotse manifest (``--cuts``; precomputed features
when the cuts have them, else their audio), or by default ``DEFAULT_SYNTHETIC_SECONDS`` of
synthetic audio (a voiced, syllable-rate modulated harmonic signal with noise; seeded).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asrq.bench.lean import Inputs, load_inputs, save_inputs
from asrq.bench.memory import MemoryProbe
from asrq.bench.runtimes import EXTRA_RUNTIMES
from asrq.bench.sherpa import TAIL_PADDING_S
from asrq.bench.steps import streaming_step
from asrq.runtime.backends import BACKENDS, get_backend
from asrq.runtime.model_dir import ModelDir, read_model_dir
from asrq.utils.io import AsrqError, atomic_write_json

DEFAULT_SYNTHETIC_SECONDS = 8.0
SCHEMA = "asrq-bench-v1"


@dataclass
class Utterance:
    label: str
    feats: Tensor  # (T, F) fbank
    seconds: float
    samples: Tensor | None = None  # (S,) 16 kHz, where known (runtimes with their own fbank)


@dataclass
class RunSettings:
    """One benchmark run (one backend, one thread count); JSON-serialisable for the subprocess."""

    model_dir: str
    backend: str
    threads: int
    features_path: str  # .npz written by asrq.bench.lean.save_inputs
    warmup_chunks: int = 3
    isolated: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def synthetic_audio(
    seconds: float = DEFAULT_SYNTHETIC_SECONDS, sample_rate: int = 16000, seed: int = 0
) -> Tensor:
    """Speech-like test signal ``(S,)``: a harmonic tone with a wandering pitch (100-200 Hz),
    amplitude-modulated at a syllable rate (~4 Hz), plus noise. Deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * sample_rate)
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    f0 = 150 + 50 * torch.sin(2 * math.pi * 0.3 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / sample_rate
    voiced = sum(torch.sin(k * phase) / k for k in range(1, 12))
    envelope = (0.5 + 0.5 * torch.sin(2 * math.pi * 4.0 * t)).clamp(min=0) ** 2
    x = 0.1 * voiced * envelope + 0.01 * torch.randn(n, generator=g, dtype=torch.float64)
    return x.float()


def load_utterances(
    audio: Sequence[str | Path] = (),
    cuts: str | Path | None = None,
    max_files: int = 10,
    synthetic_seconds: float = DEFAULT_SYNTHETIC_SECONDS,
) -> list[Utterance]:
    """Benchmark inputs as fbank: audio files, a cuts manifest, or synthetic audio (default)."""
    from asrq.runtime.audio import SAMPLE_RATE, compute_fbank, load_audio

    if audio and cuts:
        raise AsrqError("give --audio or --cuts, not both")
    utts: list[Utterance] = []
    if audio:
        for p in list(audio)[:max_files]:
            wav = load_audio(p)
            feats = compute_fbank(wav)
            utts.append(Utterance(str(p), feats, feats.shape[0] / 100.0, wav))
    elif cuts:
        from asrq.data.loader import load_cuts

        for cut in list(load_cuts(cuts))[:max_files]:
            samples = None
            if cut.has_recording:
                samples = torch.from_numpy(cut.load_audio()).float().mean(dim=0)
                if cut.sampling_rate != SAMPLE_RATE:
                    import torchaudio.functional as AF

                    samples = AF.resample(samples, cut.sampling_rate, SAMPLE_RATE)
            if cut.has_features:
                feats = torch.from_numpy(cut.load_features()).float()
            elif samples is not None:
                feats = compute_fbank(samples)
            else:
                raise AsrqError(f"{cuts}: cut {cut.id} has neither features nor a recording")
            utts.append(Utterance(cut.id, feats, float(cut.duration), samples))
    else:
        wav = synthetic_audio(synthetic_seconds)
        utts.append(
            Utterance(
                f"synthetic-{synthetic_seconds:g}s",
                compute_fbank(wav),
                wav.numel() / SAMPLE_RATE,
                wav,
            )
        )
    if not utts:
        raise AsrqError(f"{cuts}: no cuts to benchmark")
    return utts


def save_utterances(path: str | Path, utts: Sequence[Utterance]) -> Path:
    """The inputs as one ``.npz`` every benchmark child reads (:func:`asrq.bench.lean.load_inputs`;
    the onnxruntime child has no torch)."""
    return save_inputs(
        path,
        Inputs(
            [u.label for u in utts],
            [u.feats.numpy() for u in utts],
            [float(u.seconds) for u in utts],
            [u.samples.numpy() if u.samples is not None else None for u in utts],
        ),
    )


def check_chunk_ms(meta: dict[str, Any], chunk_ms: int | None, model_dir: str | Path) -> int:
    """The export's chunk in ms; a clear error when ``chunk_ms`` asks for another one."""
    c = int(meta["model"]["chunk_frames"])
    have = c * 40
    if chunk_ms is not None and int(chunk_ms) != have:
        raise AsrqError(
            f"{model_dir}: --chunk-ms {chunk_ms} does not match the export: its streaming "
            "encoder takes chunks of "
            f"{c} encoder frames = {have} ms; pass --chunk-ms {have} or re-export with "
            f"`asrq export ... --chunk-frames {max(1, int(chunk_ms) // 40)}`"
        )
    return have


# --------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------
def _percentiles(values_s: list[float]) -> dict[str, float]:
    import numpy as np

    if not values_s:
        return {"p10": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0, "max": 0.0}
    v = np.asarray(values_s, dtype=np.float64) * 1000.0
    q = np.quantile(v, [0.5, 0.9, 0.99, 0.1]).tolist()
    return {
        "p10": round(q[3], 4),  # least disturbed chunks (a shared machine preempts some)
        "p50": round(q[0], 4),
        "p90": round(q[1], 4),
        "p99": round(q[2], 4),
        "mean": round(float(v.mean()), 4),
        "max": round(float(v.max()), 4),
    }


def measure_torch_child(settings: RunSettings, md: ModelDir | None = None) -> dict[str, Any]:
    """One (backend, threads) run in this process through the shared runtime (torch tensors):
    the raw timings and memory figures (see :func:`finish_run`). ``md``: the model directory
    already read (else ``settings.model_dir`` is read)."""
    from asrq.decode.streaming import iter_windows

    torch.set_num_threads(1)  # torch only moves small tensors here; keep it off the runtime's cores
    inputs = load_inputs(settings.features_path)
    feats = [torch.from_numpy(f) for f in inputs.feats]
    t0 = time.perf_counter()
    get_backend(settings.backend).import_library()
    import_s = time.perf_counter() - t0
    md = md or read_model_dir(settings.model_dir)
    step = streaming_step(md)
    probe = MemoryProbe()
    probe.baseline_now()
    t0 = time.perf_counter()
    comp, new_search, advance = step.open(md, settings.backend, settings.threads)
    load_s = time.perf_counter() - t0

    def windows(f: Tensor):
        return iter_windows(f[None], torch.tensor([f.shape[0]]), comp.chunk_frames)

    # warm-up: a few chunks, not timed (first calls allocate and pack weights)
    states, search = comp.init_states(1), new_search()
    for k, (x, x_lens) in enumerate(windows(feats[0])):
        if k >= settings.warmup_chunks:
            break
        enc, valid, states = comp.encode_chunk(x, x_lens, states)
        advance(enc, valid, search)

    chunk_s: list[float] = []
    enc_s: list[float] = []
    for f in feats:
        states, search = comp.init_states(1), new_search()
        for x, x_lens in windows(f):
            t = time.perf_counter()
            enc, valid, states = comp.encode_chunk(x, x_lens, states)
            t_enc = time.perf_counter()
            advance(enc, valid, search)
            done = time.perf_counter()
            chunk_s.append(done - t)
            enc_s.append(t_enc - t)
    return {
        "import_s": import_s,
        "load_s": load_s,
        "chunk_s": chunk_s,
        "enc_s": enc_s,
        "programs": list(step.programs),
        **probe.finish(),
    }


def finish_run(settings: RunSettings, md: ModelDir, raw: dict[str, Any]) -> dict[str, Any]:
    """A run's report entry from a child's raw figures (timings in s, memory in bytes) and the
    export's file sizes."""
    inputs = load_inputs(settings.features_path, features=False)
    audio_s = sum(inputs.seconds)
    chunk_s, enc_s = raw["chunk_s"], raw["enc_s"]
    files = md.meta["programs"].get(settings.backend, {})
    file_bytes = {name: int(files[name]["bytes"]) for name in files}
    file_bytes.update(raw.get("file_bytes", {}))
    programs = raw["programs"]
    return {
        "backend": settings.backend,
        "threads": settings.threads,
        "import_ms": round(raw["import_s"] * 1000, 3),
        "load_ms": round(raw["load_s"] * 1000, 3),
        "rtf": round(sum(chunk_s) / audio_s, 6) if audio_s else None,
        "chunk_latency_ms": _percentiles(chunk_s),
        "encoder_latency_ms": _percentiles(enc_s),
        "num_chunks": len(chunk_s),
        "audio_seconds": round(audio_s, 3),
        "processing_seconds": round(sum(chunk_s), 4),
        "model_peak_bytes": raw["model_peak_bytes"],
        "model_rss_bytes": raw["model_rss_bytes"],
        "peak_rss_bytes": raw["peak_rss_bytes"],
        "baseline_rss_bytes": raw["baseline_rss_bytes"],
        "memory_method": raw["memory_method"]
        + ("" if settings.isolated else "; IN-PROCESS run: the harness shares the process"),
        "child": raw.get("child", "torch"),
        **({"flush_ms": round(raw["flush_s"] * 1000, 3)} if "flush_s" in raw else {}),
        **raw.get("extra", {}),
        "torch_imported": raw["torch_imported"],
        "file_bytes": file_bytes,
        "total_file_bytes": sum(file_bytes.values()),
        "streaming_file_bytes": sum(file_bytes.get(n, 0) for n in programs),
        **settings.extra,
    }


def run_once(settings: RunSettings, md: ModelDir | None = None) -> dict[str, Any]:
    """Measure one (backend, threads) run in this process (the harness shares its memory)."""
    md = md or read_model_dir(settings.model_dir)
    if settings.backend in EXTRA_RUNTIMES:
        import importlib

        child = importlib.import_module(EXTRA_RUNTIMES[settings.backend].child)
        raw = child.run_child(asdict(settings))
        return finish_run(settings, md, {**raw, "child": "in-process"})
    return finish_run(settings, md, measure_torch_child(settings, md))


def check_runtime(md: ModelDir, name: str) -> None:
    """A clear error unless ``name`` is a backend this export has or an extra runtime it
    supports."""
    if name in EXTRA_RUNTIMES:
        rt = EXTRA_RUNTIMES[name]
        if not rt.supports(md.meta):
            raise AsrqError(f"{md.path}: no {name} files in this export; {rt.export_hint}")
        return
    get_backend(name)
    md.check_backend(name)


def child_module(md: ModelDir, backend: str) -> tuple[str, str]:
    """(the module a run's child executes, what the child holds): onnxruntime runs numpy-only
    where the head's streaming step has an ``onnx_child`` (RNN-T: :mod:`asrq.bench.lean`); the
    extra runtimes in their own children; the rest through the shared runtime."""
    if backend in EXTRA_RUNTIMES:
        return EXTRA_RUNTIMES[backend].child, EXTRA_RUNTIMES[backend].holds
    onnx_child = streaming_step(md).onnx_child
    if backend == "onnx" and onnx_child:
        return onnx_child, "numpy+onnxruntime"
    return "asrq.bench.runner", f"torch+{backend}"


def run_isolated(
    settings: RunSettings, md: ModelDir | None = None, timeout: float = 3600.0
) -> dict[str, Any]:
    """One run in a fresh child process that holds only what its runtime needs (its own memory
    figures); raises on failure."""
    md = md or read_model_dir(settings.model_dir)
    module, holds = child_module(md, settings.backend)
    with tempfile.TemporaryDirectory(prefix="asrq-bench-") as tmp:
        spec, out = Path(tmp) / "settings.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps(asdict(settings)))
        cmd = [sys.executable, "-m", module, str(spec), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise AsrqError(
                f"benchmark run {settings.backend} x{settings.threads} failed: " + " | ".join(tail)
            )
        raw = json.loads(out.read_text())
    return finish_run(settings, md, {**raw, "child": holds})


# --------------------------------------------------------------------------------------------
# the whole benchmark
# --------------------------------------------------------------------------------------------
def run_bench(
    model_dir: str | Path | ModelDir,
    backends: Sequence[str] | None = None,
    threads: Sequence[int] = (1, 2),
    chunk_ms: int | None = None,
    audio: Sequence[str | Path] = (),
    cuts: str | Path | None = None,
    out: str | Path | None = None,
    max_files: int = 10,
    synthetic_seconds: float = DEFAULT_SYNTHETIC_SECONDS,
    warmup_chunks: int = 3,
    isolate: bool = True,
    plot: bool = True,
    log_fn=None,
) -> dict[str, Any]:
    """Benchmark every (backend, threads) pair; writes the JSON report (default
    ``<model_dir>/bench.json``) and, for several runs, a PNG chart beside it. Returns the report."""
    from asrq import __version__
    from asrq.bench.report import host_info, metric_records, plot_runs

    md = read_model_dir(model_dir)
    model_dir, meta = md.path, md.meta
    if not backends:
        backends = [b for b in BACKENDS if b in md.backends]
        backends += [n for n, rt in EXTRA_RUNTIMES.items() if rt.default and rt.supports(md.meta)]
    backends = list(backends)
    for b in backends:
        check_runtime(md, b)
    if not threads or any(int(t) < 1 for t in threads):
        raise AsrqError(f"--threads must be positive integers (got {list(threads)})")
    chunk_ms = check_chunk_ms(meta, chunk_ms, model_dir)
    utts = load_utterances(audio, cuts, max_files, synthetic_seconds)
    runs = []
    with tempfile.TemporaryDirectory(prefix="asrq-bench-feats-") as tmp:
        feats_path = save_utterances(Path(tmp) / "inputs.npz", utts)
        for b in backends:
            for t in threads:
                s = RunSettings(str(model_dir), b, int(t), str(feats_path), warmup_chunks, isolate)
                r = run_isolated(s, md) if isolate else run_once(s, md)
                runs.append(r)
                if log_fn:
                    log_fn(
                        f"{b:<10} threads={t}: RTF {r['rtf']:.4f}, "
                        f"chunk p90 {r['chunk_latency_ms']['p90']:.2f} ms, "
                        f"model peak {r['model_peak_bytes'] / 2**20:.1f} MiB"
                    )
    m = meta["model"]
    device = host_info()
    report = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "asrq_version": __version__,
        "device": device,
        "model": {
            "dir": str(model_dir),
            "name": meta.get("name"),
            "subnet": meta.get("subnet"),
            "model_type": meta.get("model_type"),
            "checkpoint_step": meta.get("checkpoint_step"),
            "num_parameters": m.get("num_parameters"),
            "chunk_frames": m["chunk_frames"],
            "chunk_ms": chunk_ms,
            "left_frames": m["left_frames"],
            "dtype": "fp32",
        },
        "settings": {
            "search": streaming_step(md).search,
            "sherpa_tail_padding_s": TAIL_PADDING_S if "sherpa-onnx" in backends else None,
            "inputs": [u.label for u in utts],
            "num_utterances": len(utts),
            "audio_seconds": round(sum(u.seconds for u in utts), 3),
            "warmup_chunks": warmup_chunks,
            "isolated_processes": isolate,
        },
        "runs": runs,
    }
    report["metrics"] = metric_records(report)
    out = Path(out) if out else model_dir / "bench.json"
    if plot and len(runs) > 1:
        png = out.with_suffix(".png")
        plot_runs(report, png)
        report["chart"] = str(png)
    atomic_write_json(out, report)
    report["json"] = str(out)
    return report


def _main(argv: list[str]) -> int:
    """Subprocess entry: ``python -m asrq.bench.runner SETTINGS.json RESULT.json``."""
    settings = RunSettings(**json.loads(Path(argv[0]).read_text()))
    atomic_write_json(argv[1], measure_torch_child(settings))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
