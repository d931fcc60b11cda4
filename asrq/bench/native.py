"""The native runner (``export/runner``, ``asrq-runner``) as a benchmark runtime
(``asrq bench --backend native``).

The child (``python -m asrq.bench.native SETTINGS RESULT``; numpy, soundfile and the standard
library only) builds the host runner (:func:`asrq.device.build.build_runner`: incremental, a no-op
once built) or takes ``ASRQ_RUNNER`` (a prebuilt binary), writes the inputs' 16 kHz samples as
float32 wav files (the exact samples the other runtimes' fbank came from), runs
``asrq-runner --model-dir M --wav ... --threads N --warmup 1 --json OUT`` once per run and converts
its JSON to the raw figures of the other children:

- ``chunk_s``: the runner's per-chunk latencies (one streaming encoder call + the predictor and
  joiner calls of its frames; fbank is computed per file before the chunks, not timed in them, as
  in the Python runtimes); ``enc_s`` is empty (the runner does not time the encoder apart);
- ``load_s``: the runner's ``load_ms`` (threadpool sized, three programs loaded and planned);
  ``import_s`` is 0 (no library import: the runner links ExecuTorch);
- memory: the runner is its own process, so its figures are its own (see
  :data:`MEMORY_METHOD`), read from ``/proc/self/status`` by the runner itself.

Warm-up: one untimed decode of the first file (``--warmup 1``) where the Python children warm up
on ``warmup_chunks`` chunks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from asrq.bench.lean import load_inputs
from asrq.utils.io import AsrqError, atomic_write_json

NAME = "native"
SAMPLE_RATE = 16000
#: the programs the runner loads (``asrq.device.build.MODEL_FILES`` less metadata and tokens)
PROGRAMS = ("encoder_streaming.pte", "predictor.pte", "joiner.pte")
#: environment variable naming a prebuilt runner binary (skips the CMake build)
RUNNER_ENV = "ASRQ_RUNNER"
MEMORY_METHOD = (
    "native runner process (asrq-runner, no Python): linux /proc/self/status read by the runner; "
    "baseline = VmRSS after the wavs are read, before the threadpool is sized and the programs "
    "load; VmHWM reset there (write 5 to /proc/self/clear_refs); model_peak_bytes = VmHWM after "
    "loading + warm-up + streaming - baseline; model_rss_bytes = VmRSS at the end - baseline; "
    "peak_rss_bytes = the runner's absolute VmHWM"
)
MEMORY_METHOD_NO_RESET = (
    "native runner process (asrq-runner, no Python): VmHWM could not be reset: model_peak_bytes = "
    "the runner's peak RSS - its VmRSS before the programs load, an upper bound"
)
MEMORY_METHOD_NO_PROC = (
    "native runner process (asrq-runner): no /proc: model_peak_bytes = peak_rss_bytes = "
    "getrusage ru_maxrss of the whole runner (no baseline)"
)


def runner_binary() -> Path:
    """``$ASRQ_RUNNER`` when set, else the host build (built or brought up to date here)."""
    env = os.environ.get(RUNNER_ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise AsrqError(f"{p}: ${RUNNER_ENV} names no file")
        return p
    from asrq.device.build import build_runner

    return build_runner("host").binary


def write_wavs(samples: list[np.ndarray | None], out_dir: Path) -> list[Path]:
    """Each utterance's samples as ``out_dir/uNNN.wav`` (16 kHz mono float32: no requantization,
    the runner reads float wav)."""
    import soundfile as sf

    if any(s is None for s in samples):
        raise AsrqError(
            "the native runner computes its own features: give inputs with audio "
            "(--audio, cuts with recordings, or the synthetic default)"
        )
    paths = []
    for i, s in enumerate(samples):
        p = out_dir / f"u{i:03d}.wav"
        sf.write(str(p), np.asarray(s, dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
        paths.append(p)
    return paths


def raw_figures(report: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """The runner's ``--json`` report -> the raw figures of a benchmark child."""
    mib = 2**20
    base_mb = float(report.get("rss_before_load_mb", -1.0))
    peak_mb = float(report["peak_rss_mb"])
    have_base = base_mb >= 0  # the runner had /proc
    return {
        "import_s": 0.0,
        "load_s": float(report["load_ms"]) / 1000.0,
        "chunk_s": [float(v) / 1000.0 for v in report["chunk_ms"]],
        "enc_s": [],
        "programs": list(PROGRAMS),
        "file_bytes": {f: (model_dir / f).stat().st_size for f in PROGRAMS},
        "baseline_rss_bytes": int(base_mb * mib) if have_base else None,
        "model_peak_bytes": int(float(report["model_peak_mb"]) * mib if have_base else peak_mb),
        "model_rss_bytes": int(max(0.0, float(report["rss_end_mb"]) - base_mb) * mib)
        if have_base
        else 0,
        "peak_rss_bytes": int(peak_mb * mib),
        "torch_imported": False,
        "memory_method": MEMORY_METHOD
        if report.get("hwm_reset")
        else (MEMORY_METHOD_NO_RESET if have_base else MEMORY_METHOD_NO_PROC),
        "extra": {
            # the runner's own RTF counts fbank too (per file, before its chunks)
            "runner_rtf_with_fbank": float(report["rtf"]),
            "runner_chunks": int(report["chunk_latency_ms"]["count"]),
        },
    }


def run_child(settings: dict[str, Any]) -> dict[str, Any]:
    """One native-runner run (settings of :class:`asrq.bench.runner.RunSettings`): the raw
    timings and memory figures of the other children."""
    model_dir = Path(settings["model_dir"])
    missing = [f for f in PROGRAMS if not (model_dir / f).is_file()]
    if missing:
        raise AsrqError(f"{model_dir}: missing {missing}; export with --executorch")
    inputs = load_inputs(settings["features_path"], features=False, samples=True)
    binary = runner_binary()
    with tempfile.TemporaryDirectory(prefix="asrq-bench-native-") as tmp:
        wavs = write_wavs(inputs.samples, Path(tmp))
        out = Path(tmp) / "runner.json"
        cmd = [str(binary), "--model-dir", str(model_dir)]
        for w in wavs:
            cmd += ["--wav", str(w)]
        cmd += ["--threads", str(settings["threads"]), "--warmup", "1", "--json", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise AsrqError(f"{binary} failed (exit {proc.returncode}): " + " | ".join(tail))
        report = json.loads(out.read_text())
    return raw_figures(report, model_dir)


def _main(argv: list[str]) -> int:
    """``python -m asrq.bench.native SETTINGS.json RESULT.json``."""
    settings = json.loads(Path(argv[0]).read_text())
    atomic_write_json(argv[1], run_child(settings))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
