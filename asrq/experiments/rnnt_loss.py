"""Peak memory and time of RNN-T losses (forward + backward) on the host CPU.

Variants, all with an icefall-style joiner ``linear(tanh(am + lm))`` (``J -> C``) on leaf
inputs ``am (B, T, J)`` and ``lm (B, S+1, J)``:

- ``full_torchaudio``: joiner on the full lattice ``(B, T, S+1, C)`` + torchaudio's fused loss;
- ``full_asrq``: the same logits + :func:`asrq.losses.rnnt.rnnt_loss_full` (our recursion);
- ``pruned``: icefall's recipe: ``simple_am_proj``/``simple_lm_proj`` (``J -> C``) +
  :func:`rnnt_loss_smoothed` (``return_grad``) -> :func:`get_rnnt_prune_ranges` ->
  :func:`do_rnnt_pruning` -> joiner on ``(B, T, prune_range, C)`` -> :func:`rnnt_loss_pruned`,
  loss ``0.5 * simple + pruned``;
- ``recursion``: :func:`mutual_information_recursion` alone on random ``px``/``py``
  (``recursion_shape = (B, T, S)``), the part that runs every step in Python.

How memory is measured: each variant runs in a fresh Python process (glibc
``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB, so big tensors are mmapped and their pages go
back to the OS on free, and the resident set follows live memory). After the inputs are
built, the kernel's peak-RSS mark is reset (``/proc/self/clear_refs`` = 5) and the baseline
RSS read; the peak is ``VmHWM`` after one forward+backward minus that baseline. The first
iteration (``peak_mb_first``) includes one-time allocations (thread pools, MKL buffers); the
mark is reset again before the timed iterations (``peak_mb``). Where ``clear_refs`` cannot be
written, ``ru_maxrss`` minus the baseline is used and ``memory_method`` says so. Time is the
median wall time of ``reps`` forward+backward iterations after one warm-up; ``cpu_ms_median``
is the process CPU time of the same iterations (all threads), a steadier number on a shared
machine (the load average at start is recorded too).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from asrq.utils.io import atomic_write_json

VARIANTS = ("full_torchaudio", "full_asrq", "pruned", "recursion")
BLANK = 0


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _PeakMeter:
    """Peak resident memory growth (MB) of this process over a ``with`` block."""

    def __enter__(self) -> _PeakMeter:
        import gc
        import resource

        gc.collect()
        self.reset = _reset_peak()
        self.base_kb = _status_kb("VmRSS")
        self._resource = resource
        return self

    def __exit__(self, *exc: object) -> None:
        if self.reset:
            peak_kb = _status_kb("VmHWM")
        else:
            peak_kb = self._resource.getrusage(self._resource.RUSAGE_SELF).ru_maxrss
        self.peak_mb = max(0, peak_kb - self.base_kb) / 1024.0
        self.method = "VmHWM after clear_refs" if self.reset else "ru_maxrss (peak not resettable)"


def _build(variant: str, cfg: dict[str, Any]):
    """Inputs and a closure running one forward+backward of ``variant``."""
    from asrq.losses.mutual_information import mutual_information_recursion
    from asrq.losses.rnnt import (
        do_rnnt_pruning,
        get_rnnt_prune_ranges,
        rnnt_boundary,
        rnnt_loss_full,
        rnnt_loss_pruned,
        rnnt_loss_smoothed,
        torchaudio_rnnt_loss,
    )

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if variant == "recursion":
        B, T, S = cfg["recursion_shape"]
        px = torch.randn(B, S, T + 1, generator=g).sub(3).requires_grad_()
        py = torch.randn(B, S + 1, T, generator=g).sub(3).requires_grad_()

        def step() -> None:
            mutual_information_recursion(px, py).sum().backward()
            px.grad = py.grad = None

        return step

    B, T, S, C, J = cfg["batch"], cfg["frames"], cfg["symbols"], cfg["vocab"], cfg["joiner_dim"]
    am = torch.randn(B, T, J, generator=g).requires_grad_()
    lm = torch.randn(B, S + 1, J, generator=g).requires_grad_()
    symbols = torch.randint(1, C, (B, S), generator=g)
    t_lens = torch.full((B,), T, dtype=torch.int64)
    s_lens = torch.full((B,), S, dtype=torch.int64)
    boundary = rnnt_boundary(s_lens, t_lens)
    out = torch.nn.Linear(J, C)
    params = [am, lm, *out.parameters()]

    def joiner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return out(torch.tanh(a + b))

    def zero() -> None:
        for p in params:
            p.grad = None

    if variant in ("full_torchaudio", "full_asrq"):

        def step() -> None:
            logits = joiner(am.unsqueeze(2), lm.unsqueeze(1))  # (B, T, S+1, C)
            if variant == "full_torchaudio":
                loss = torchaudio_rnnt_loss(logits, symbols, t_lens, s_lens, BLANK, "sum")
            else:
                loss = rnnt_loss_full(logits, symbols, BLANK, boundary, "sum")
            loss.backward()
            zero()

        return step

    if variant == "pruned":
        simple_am, simple_lm = torch.nn.Linear(J, C), torch.nn.Linear(J, C)
        params += [*simple_am.parameters(), *simple_lm.parameters()]

        def step() -> None:
            simple, (px_grad, py_grad) = rnnt_loss_smoothed(
                simple_lm(lm), simple_am(am), symbols, BLANK, boundary=boundary, return_grad=True
            )
            ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, cfg["prune_range"])
            am_p, lm_p = do_rnnt_pruning(am, lm, ranges)
            pruned = rnnt_loss_pruned(joiner(am_p, lm_p), symbols, ranges, BLANK, boundary, "sum")
            (0.5 * simple + pruned).backward()
            zero()

        return step
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def _worker(variant: str, cfg: dict[str, Any]) -> dict[str, Any]:
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    step = _build(variant, cfg)
    with _PeakMeter() as first:
        step()
    times, cpu = [], []
    with _PeakMeter() as steady:
        for _ in range(cfg["reps"]):
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            times.append((time.perf_counter() - t0) * 1000.0)
            cpu.append((time.process_time() - c0) * 1000.0)
    return {
        "variant": variant,
        "peak_mb": round(steady.peak_mb, 1),
        "peak_mb_first": round(first.peak_mb, 1),
        "ms_median": round(statistics.median(times), 1),
        "ms_min": round(min(times), 1),
        "ms_all": [round(t, 1) for t in times],
        "cpu_ms_median": round(statistics.median(cpu), 1),
        "memory_method": steady.method,
        "threads": torch.get_num_threads(),
    }


def _host_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    import torchaudio

    return {
        "device": "cpu",
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_avg_at_start": os.getloadavg(),
    }


def run(
    out_path: str | os.PathLike = "exp/bench/rnnt_loss_memory.json",
    batch: int = 8,
    frames: int = 250,
    symbols: int = 60,
    vocab: int = 500,
    joiner_dim: int = 256,
    prune_range: int = 5,
    reps: int = 3,
    threads: int | None = None,
    recursion_shape: tuple[int, int, int] = (16, 200, 50),
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, Any]:
    """Run each variant in its own process, print a table, write ``out_path`` (JSON)."""
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    cfg = {
        "batch": batch,
        "frames": frames,
        "symbols": symbols,
        "vocab": vocab,
        "joiner_dim": joiner_dim,
        "prune_range": prune_range,
        "reps": reps,
        "threads": threads,
        "recursion_shape": list(recursion_shape),
    }
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    results = []
    for v in variants:
        proc = subprocess.run(
            [sys.executable, "-m", "asrq.experiments.rnnt_loss", v, json.dumps(cfg)],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark variant {v} failed:\n{proc.stderr[-2000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    report = {
        "host": _host_info(),
        "config": cfg,
        "memory_note": (
            "peak_mb: growth of the process resident set (VmHWM) over forward+backward above "
            "the RSS after inputs were built, fresh process per variant; "
            "see asrq/experiments/rnnt_loss.py"
        ),
        "lattice": {
            "full_logits_mb": batch * frames * (symbols + 1) * vocab * 4 / 2**20,
            "pruned_logits_mb": batch * frames * prune_range * vocab * 4 / 2**20,
        },
        "results": results,
    }
    atomic_write_json(out_path, report)
    print(format_table(report))
    print(f"wrote {Path(out_path)}")
    return report


def format_table(report: dict[str, Any]) -> str:
    c = report["config"]
    rows = [
        f"B={c['batch']} T={c['frames']} S={c['symbols']} C={c['vocab']} J={c['joiner_dim']} "
        f"prune_range={c['prune_range']}; recursion B,T,S={tuple(c['recursion_shape'])}; "
        f"load avg at start {report['host']['load_avg_at_start'][0]:.2f} "
        f"on {report['host']['cpu_count']} CPUs",
        f"{'variant':<16}{'peak MB':>10}{'first MB':>10}{'ms (median)':>13}{'ms (min)':>10}"
        f"{'CPU ms':>10}",
    ]
    for r in report["results"]:
        rows.append(
            f"{r['variant']:<16}{r['peak_mb']:>10.1f}{r['peak_mb_first']:>10.1f}"
            f"{r['ms_median']:>13.1f}{r['ms_min']:>10.1f}{r['cpu_ms_median']:>10.1f}"
        )
    return "\n".join(rows)


if (
    __name__ == "__main__"
):  # worker entry used by run(): python -m asrq.experiments.rnnt_loss VARIANT CFG
    print(json.dumps(_worker(sys.argv[1], json.loads(sys.argv[2]))))
