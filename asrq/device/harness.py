"""``asrq device bench``: run the native runner on a target and keep a per-device result.

One code path for every :class:`~asrq.device.transport.Transport`:

1. stage: the test audio as 16 kHz mono PCM-16 wav (any format :func:`asrq.runtime.audio.load_audio`
   reads goes in), checked model files;
2. push into the target's work dir: ``asrq-runner`` and its ExecuTorch libraries side by side,
   ``model/`` (the three programs, ``metadata.json``, ``tokens.txt``), ``wavs/``;
3. probe: ``uname -m``, the CPU name, per-core max frequency; pin ``N`` threads to the ``N``
   fastest cores (the big cores of a big.LITTLE phone) with ``taskset HEXMASK`` (util-linux and
   Android's toybox both take a hex mask);
4. run once per thread count, pull each JSON, and write ``<out>/<name>/bench.json`` and
   ``bench.png``.

An aarch64 runner on an x86-64 target runs under ``qemu-aarch64`` when the target has it; the
result then says ``"emulated": true`` and its timings are emulation, not device latency.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from asrq.device.build import MODEL_FILES, QEMU_AARCH64, RunnerBuild
from asrq.device.transport import RunResult, Transport
from asrq.utils.io import AsrqError, atomic_path, atomic_write_json

RUNNER = "asrq-runner"
_MACHINE_ARCH = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "armv8l": "aarch64",
}


def device_name(transport: Transport) -> str:
    """Default result folder name: ``local``, the ssh host, or the adb serial."""
    raw = transport.name.split(":", 1)[-1].split("@")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw) or "device"


def stage_wavs(paths: Sequence[str | Path], out_dir: Path) -> list[tuple[str, Path]]:
    """Each audio file as ``out_dir/wNNN.wav`` (16 kHz mono PCM-16) -> ``[(original, staged)]``."""
    import numpy as np
    import soundfile as sf

    from asrq.runtime.audio import SAMPLE_RATE, load_audio

    if not paths:
        raise AsrqError("no test audio given (--wavs)")
    staged = []
    for i, p in enumerate(paths):
        wav = load_audio(p).numpy()  # AsrqError naming the file when unreadable
        pcm = np.clip(np.round(wav * 32768.0), -32768, 32767).astype(np.int16)
        dst = out_dir / f"w{i:03d}.wav"
        sf.write(str(dst), pcm, SAMPLE_RATE, subtype="PCM_16")
        staged.append((str(p), dst))
    return staged


def check_model_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise AsrqError(f"{model_dir}: model directory not found")
    missing = [f for f in MODEL_FILES if not (model_dir / f).is_file()]
    if missing:
        raise AsrqError(f"{model_dir}: missing {missing}; export with --executorch (asrq export)")


def pick_cores(freqs: dict[int, int], n: int) -> list[int]:
    """The ``n`` cores with the highest max frequency (ties: lower id first); all of them when
    ``n`` exceeds the count."""
    order = sorted(freqs, key=lambda c: (-freqs[c], c))
    return sorted(order[:n])


def cpu_mask(cores: Sequence[int]) -> str:
    """``taskset`` affinity mask: hex digits without ``0x`` (util-linux and toybox both read
    a bare hex mask)."""
    return format(sum(1 << c for c in cores), "x")


_PROBE = (
    "uname -m; echo __cpus; for d in /sys/devices/system/cpu/cpu[0-9]*; do "
    'f=$(cat $d/cpufreq/cpuinfo_max_freq 2>/dev/null || echo 0); echo "${d##*/cpu} $f"; done; '
    "echo __model; (grep -m1 -iE '^(model name|Hardware|cpu model)' /proc/cpuinfo | cut -d: -f2-) "
    "2>/dev/null; getprop ro.product.model 2>/dev/null; echo __tools; "
    "command -v taskset >/dev/null 2>&1 && echo taskset; "
    "command -v qemu-aarch64 >/dev/null 2>&1 && echo qemu-aarch64; true"
)


def probe(transport: Transport) -> dict[str, Any]:
    """Architecture, CPU name, per-core max frequency (kHz, 0 if unknown), available tools."""
    res = transport.run(_PROBE, timeout=60)
    if res.returncode != 0:
        raise AsrqError(f"{transport.name}: probe failed: {res.stderr.strip()[-400:]}")
    lines = res.stdout.splitlines()
    info: dict[str, Any] = {
        "machine": lines[0].strip() if lines else "",
        "cpus": {},
        "model": "",
        "tools": [],
    }
    section = None
    for line in lines[1:]:
        s = line.strip()
        if s in ("__cpus", "__model", "__tools"):
            section = s
            continue
        if section == "__cpus" and re.fullmatch(r"\d+ \d+", s):
            c, f = s.split()
            info["cpus"][int(c)] = int(f)
        elif section == "__model" and s and not info["model"]:
            info["model"] = s
        elif section == "__tools" and s:
            info["tools"].append(s)
    if not info["cpus"]:
        info["cpus"] = {0: 0}
    return info


def _checked(res: RunResult, what: str) -> RunResult:
    if res.returncode != 0:
        raise AsrqError(
            f"{what} failed (exit {res.returncode}): {(res.stderr or res.stdout).strip()[-800:]}"
        )
    return res


def bench_device(
    model_dir: str | Path,
    transport: Transport,
    runner: RunnerBuild,
    wavs: Sequence[str | Path],
    threads: Sequence[int] = (1,),
    name: str | None = None,
    out_root: str | Path = "devices",
    warmup: int = 1,
    pin: bool = True,
    cleanup: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Push, run per thread count, pull; writes ``<out_root>/<name>/bench.json`` + ``bench.png``
    and returns the result dict (see the module doc)."""
    model_dir = Path(model_dir)
    check_model_dir(model_dir)
    if not threads or any(t < 1 for t in threads):
        raise AsrqError(f"thread counts must be >= 1 (got {list(threads)})")
    name = name or device_name(transport)
    out_dir = Path(out_root) / name
    with tempfile.TemporaryDirectory(prefix="asrq-device-stage-") as tmp:
        staged = stage_wavs(wavs, Path(tmp))
        info = probe(transport)
        target_arch = _MACHINE_ARCH.get(info["machine"], info["machine"])
        binary_arch = "aarch64" if runner.arch == "aarch64" else _host_arch()
        launcher = ""
        if target_arch != binary_arch:
            if binary_arch == "aarch64" and "qemu-aarch64" in info["tools"]:
                launcher = " ".join(shlex.quote(a) for a in QEMU_AARCH64) + " "
            else:
                raise AsrqError(
                    f"{transport.name} is {info['machine']}; the runner was built for "
                    f"{binary_arch} (build it with --arch {target_arch})"
                )
        log(
            f"{transport.name}: {info['machine']}, {len(info['cpus'])} cores, "
            f"{info['model'] or 'cpu ?'}"
        )
        t0 = time.perf_counter()
        transport.push(runner.binary, RUNNER)
        for lib in runner.libs:
            transport.push(lib, lib.name)
        for f in MODEL_FILES:
            transport.push(model_dir / f, f"model/{f}")
        for _, w in staged:
            transport.push(w, f"wavs/{w.name}")
        _checked(transport.run(f"chmod 755 {RUNNER}", 60), f"{transport.name}: chmod")
        push_s = time.perf_counter() - t0
        log(
            f"pushed runner, {len(runner.libs)} libraries, model and {len(staged)} wavs "
            f"in {push_s:.1f} s"
        )
        wav_args = " ".join(f"--wav wavs/{w.name}" for _, w in staged)
        runs = []
        for n in threads:
            cores = pick_cores(info["cpus"], n)
            taskset = f"taskset {cpu_mask(cores)} " if pin and "taskset" in info["tools"] else ""
            out_json = f"result_t{n}.json"
            cmd = (
                f"LD_LIBRARY_PATH=. {taskset}{launcher}./{RUNNER} --model-dir model {wav_args} "
                f"--threads {n} --warmup {warmup} --json {out_json}"
            )
            log(f"threads={n}: {cmd}")
            _checked(transport.run(cmd, timeout=3600), f"{transport.name}: {RUNNER} --threads {n}")
            local = Path(tmp) / out_json
            transport.pull(out_json, local)
            r = json.loads(local.read_text())
            r["cpus"] = cores if taskset else None
            r["command"] = cmd
            runs.append(r)
        if cleanup:
            transport.run(f"rm -rf {RUNNER} lib*.so model wavs result_t*.json", 60)
            if getattr(transport, "owned", False):  # a temp work dir the transport made
                shutil.rmtree(transport.workdir, ignore_errors=True)
    first = runs[0]
    result = {
        "device": name,
        "target": transport.name,
        "transport": transport.kind,
        "machine": info["machine"],
        "cpu": info["model"],
        "core_max_khz": {str(k): v for k, v in sorted(info["cpus"].items())},
        "runner_arch": binary_arch,
        "emulated": bool(launcher),
        "note": "emulated under qemu: timings are not device latency" if launcher else "",
        "model_dir": str(model_dir),
        "runs": [
            {
                k: r[k]
                for k in (
                    "threads",
                    "cpus",
                    "rtf",
                    "chunk_latency_ms",
                    "load_ms",
                    "peak_rss_mb",
                    "audio_s",
                    "compute_s",
                    "chunk_ms_audio",
                    "command",
                )
            }
            for r in runs
        ],
        "files": [
            {"audio": orig, "text": f["text"], "tokens": f["tokens"], "duration_s": f["duration_s"]}
            for (orig, _), f in zip(staged, first["files"], strict=True)
        ],
        "transcripts_agree_across_threads": all(
            [f["tokens"] for f in r["files"]] == [f["tokens"] for f in first["files"]] for r in runs
        ),
    }
    atomic_write_json(out_dir / "bench.json", result)
    plot_bench(result, out_dir / "bench.png")
    return result


def _host_arch() -> str:
    import platform

    return _MACHINE_ARCH.get(platform.machine(), platform.machine())


def plot_bench(result: dict[str, Any], path: Path) -> None:
    """Chunk latency p50/p90/p99 per thread count, RTF in the labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(runs), 3.6))
    width = 0.25
    for k, q in enumerate(("p50", "p90", "p99")):
        xs = [i + (k - 1) * width for i in range(len(runs))]
        ax.bar(xs, [r["chunk_latency_ms"][q] for r in runs], width, label=q)
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels([f"{r['threads']} thr\nRTF {r['rtf']:.4f}" for r in runs])
    ax.set_ylabel(f"chunk latency, ms ({runs[0]['chunk_ms_audio']} ms audio)")
    title = f"{result['device']} ({result['machine']})"
    ax.set_title(title + (" - EMULATED" if result["emulated"] else ""), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
