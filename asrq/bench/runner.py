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
- **peak RSS**: ``getrusage(RUSAGE_SELF).ru_maxrss`` at the end of the run. Each run executes in
  a fresh Python subprocess (``python -m asrq.bench.runner``) so runs do not share memory; the
  figure includes the Python interpreter and torch (the tensor container), so
  ``baseline_rss_bytes`` (resident set right before the model loads) is reported beside it.
- **file sizes**: bytes per program and in total, from the export.

Inputs: ``--audio`` files, or the cuts of a lhotse manifest (``--cuts``; precomputed features
when the cuts have them, else their audio), or by default ``DEFAULT_SYNTHETIC_SECONDS`` of
synthetic audio (a voiced, syllable-rate modulated harmonic signal with noise; seeded).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import resource
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


@dataclass
class RunSettings:
    """One benchmark run (one backend, one thread count); JSON-serialisable for the subprocess."""

    model_dir: str
    backend: str
    threads: int
    features_path: str  # torch.save'd list of {"label", "feats", "seconds"}
    warmup_chunks: int = 3
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
    from asrq.runtime.audio import SAMPLE_RATE, compute_fbank, load_features

    if audio and cuts:
        raise AsrqError("give --audio or --cuts, not both")
    utts: list[Utterance] = []
    if audio:
        for p in list(audio)[:max_files]:
            feats = load_features(p)
            utts.append(Utterance(str(p), feats, feats.shape[0] / 100.0))
    elif cuts:
        from asrq.data.loader import load_cuts

        for cut in list(load_cuts(cuts))[:max_files]:
            if cut.has_features:
                feats = torch.from_numpy(cut.load_features()).float()
            else:
                samples = torch.from_numpy(cut.load_audio()).float().mean(dim=0)
                if cut.sampling_rate != SAMPLE_RATE:
                    import torchaudio.functional as AF

                    samples = AF.resample(samples, cut.sampling_rate, SAMPLE_RATE)
                feats = compute_fbank(samples)
            utts.append(Utterance(cut.id, feats, float(cut.duration)))
    else:
        wav = synthetic_audio(synthetic_seconds)
        utts.append(
            Utterance(
                f"synthetic-{synthetic_seconds:g}s", compute_fbank(wav), wav.numel() / SAMPLE_RATE
            )
        )
    if not utts:
        raise AsrqError(f"{cuts}: no cuts to benchmark")
    return utts


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
# one run (in this process)
# --------------------------------------------------------------------------------------------
def _current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _percentiles(values_s: list[float]) -> dict[str, float]:
    if not values_s:
        return {"p10": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0, "max": 0.0}
    v = torch.tensor(values_s, dtype=torch.float64) * 1000.0
    q = torch.quantile(v, torch.tensor([0.5, 0.9, 0.99, 0.1], dtype=torch.float64)).tolist()
    return {
        "p10": round(q[3], 4),  # least disturbed chunks (a shared machine preempts some)
        "p50": round(q[0], 4),
        "p90": round(q[1], 4),
        "p99": round(q[2], 4),
        "mean": round(v.mean().item(), 4),
        "max": round(v.max().item(), 4),
    }


def run_once(settings: RunSettings, md: ModelDir | None = None) -> dict[str, Any]:
    """Measure one (backend, threads) run in this process; returns the run's metrics. ``md``:
    the model directory already read (else ``settings.model_dir`` is read)."""
    from asrq.decode.streaming import iter_windows

    torch.set_num_threads(1)  # torch only moves small tensors here; keep it off the runtime's cores
    utts = [Utterance(**u) for u in torch.load(settings.features_path, weights_only=True)]
    t0 = time.perf_counter()
    get_backend(settings.backend).import_library()
    import_s = time.perf_counter() - t0
    md = md or read_model_dir(settings.model_dir)
    step = streaming_step(md)
    baseline_rss = _current_rss_bytes()
    t0 = time.perf_counter()
    comp, new_search, advance = step.open(md, settings.backend, settings.threads)
    load_s = time.perf_counter() - t0

    def windows(u: Utterance):
        return iter_windows(u.feats[None], torch.tensor([u.feats.shape[0]]), comp.chunk_frames)

    # warm-up: a few chunks, not timed (first calls allocate and pack weights)
    states, search = comp.init_states(1), new_search()
    for k, (x, x_lens) in enumerate(windows(utts[0])):
        if k >= settings.warmup_chunks:
            break
        enc, valid, states = comp.encode_chunk(x, x_lens, states)
        advance(enc, valid, search)

    chunk_s: list[float] = []
    enc_s: list[float] = []
    audio_s = 0.0
    for u in utts:
        states, search = comp.init_states(1), new_search()
        for x, x_lens in windows(u):
            t = time.perf_counter()
            enc, valid, states = comp.encode_chunk(x, x_lens, states)
            t_enc = time.perf_counter()
            advance(enc, valid, search)
            done = time.perf_counter()
            chunk_s.append(done - t)
            enc_s.append(t_enc - t)
        audio_s += u.seconds
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    files = md.meta["programs"][settings.backend]
    file_bytes = {name: int(files[name]["bytes"]) for name in files}
    return {
        "backend": settings.backend,
        "threads": settings.threads,
        "import_ms": round(import_s * 1000, 3),
        "load_ms": round(load_s * 1000, 3),
        "rtf": round(sum(chunk_s) / audio_s, 6) if audio_s else None,
        "chunk_latency_ms": _percentiles(chunk_s),
        "encoder_latency_ms": _percentiles(enc_s),
        "num_chunks": len(chunk_s),
        "audio_seconds": round(audio_s, 3),
        "processing_seconds": round(sum(chunk_s), 4),
        "peak_rss_bytes": int(peak_rss),
        "baseline_rss_bytes": baseline_rss,
        "file_bytes": file_bytes,
        "total_file_bytes": sum(file_bytes.values()),
        "streaming_file_bytes": sum(file_bytes.get(n, 0) for n in step.programs),
        **settings.extra,
    }


def run_isolated(settings: RunSettings, timeout: float = 3600.0) -> dict[str, Any]:
    """:func:`run_once` in a fresh Python subprocess (its own peak RSS); raises on failure."""
    with tempfile.TemporaryDirectory(prefix="asrq-bench-") as tmp:
        spec, out = Path(tmp) / "settings.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps(asdict(settings)))
        cmd = [sys.executable, "-m", "asrq.bench.runner", str(spec), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise AsrqError(
                f"benchmark run {settings.backend} x{settings.threads} failed: " + " | ".join(tail)
            )
        return json.loads(out.read_text())


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
    backends = list(backends) if backends else [b for b in BACKENDS if b in md.backends]
    for b in backends:
        get_backend(b)
        md.check_backend(b)
    if not threads or any(int(t) < 1 for t in threads):
        raise AsrqError(f"--threads must be positive integers (got {list(threads)})")
    chunk_ms = check_chunk_ms(meta, chunk_ms, model_dir)
    utts = load_utterances(audio, cuts, max_files, synthetic_seconds)
    runs = []
    with tempfile.TemporaryDirectory(prefix="asrq-bench-feats-") as tmp:
        feats_path = Path(tmp) / "features.pt"
        torch.save([asdict(u) for u in utts], feats_path)
        for b in backends:
            for t in threads:
                s = RunSettings(str(model_dir), b, int(t), str(feats_path), warmup_chunks)
                r = run_isolated(s) if isolate else run_once(s, md)
                runs.append(r)
                if log_fn:
                    log_fn(
                        f"{b:<10} threads={t}: RTF {r['rtf']:.4f}, "
                        f"chunk p90 {r['chunk_latency_ms']['p90']:.2f} ms"
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
    atomic_write_json(argv[1], run_once(settings))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
