"""Benchmark reporting: host description, ExecuTorch-style metric records, a table and a chart.

``metric_records`` flattens a report into one record per (run, metric) in the shape of
ExecuTorch's benchmark apps (``extension/benchmark``: ``benchmarkModel`` {name, backend,
quantization}, ``metric``, ``actualValue``, ``targetValue``, ``deviceInfo``), so host and
on-device results can be collected by the same tooling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asrq.runtime.backends import BACKENDS
from asrq.utils.host import host_info
from asrq.utils.io import atomic_path

__all__ = ["format_table", "host_info", "metric_records", "plot_runs"]

#: bar colour per backend (in the order of BACKENDS)
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


#: (metric name, path in a run, unit)
METRICS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("rtf", ("rtf",), "x"),
    ("chunk_latency_p50_ms", ("chunk_latency_ms", "p50"), "ms"),
    ("chunk_latency_p90_ms", ("chunk_latency_ms", "p90"), "ms"),
    ("chunk_latency_p99_ms", ("chunk_latency_ms", "p99"), "ms"),
    ("encoder_latency_p50_ms", ("encoder_latency_ms", "p50"), "ms"),
    ("load_ms", ("load_ms",), "ms"),
    ("model_peak_bytes", ("model_peak_bytes",), "bytes"),
    ("model_rss_bytes", ("model_rss_bytes",), "bytes"),
    ("peak_rss_bytes", ("peak_rss_bytes",), "bytes"),
    ("baseline_rss_bytes", ("baseline_rss_bytes",), "bytes"),
    ("total_file_bytes", ("total_file_bytes",), "bytes"),
)


def _get(run: dict[str, Any], path: tuple[str, ...]) -> Any:
    v: Any = run
    for k in path:
        v = v.get(k) if isinstance(v, dict) else None
    return v


def _bench_name(backend: str) -> str:
    b = BACKENDS.get(backend)
    return b.bench_name if b is not None and b.bench_name else backend


def metric_records(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One ExecuTorch-benchmark-style record per (run, metric)."""
    dev, model = report["device"], report["model"]
    device_info = {
        "device": dev.get("cpu_model") or dev.get("name"),
        "arch": dev.get("arch"),
        "os": dev.get("platform"),
        "totalMem": dev.get("total_memory_bytes"),
    }
    name = model.get("name") or "model"
    if model.get("subnet"):
        name = f"{name}:{model['subnet']}"
    out = []
    for run in report["runs"]:
        for metric, path, unit in METRICS:
            out.append(
                {
                    "benchmarkModel": {
                        "name": name,
                        "backend": _bench_name(run["backend"]),
                        "quantization": model.get("dtype", "fp32"),
                    },
                    "metric": metric,
                    "unit": unit,
                    "actualValue": _get(run, path),
                    "targetValue": 0,
                    "threads": run["threads"],
                    "chunkMs": model.get("chunk_ms"),
                    "deviceInfo": device_info,
                }
            )
    return out


def _mib(v: Any) -> str:
    return "-" if v is None else f"{v / 2**20:.1f}"


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of the runs."""
    head = (
        f"{'backend':<11}{'thr':>4}{'RTF':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
        f"{'enc p50':>9}{'load ms':>9}{'model MiB':>11}{'peak MiB':>10}{'files MB':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in report["runs"]:
        c, e = r["chunk_latency_ms"], r["encoder_latency_ms"]
        lines.append(
            f"{r['backend']:<11}{r['threads']:>4}{r['rtf']:>9.4f}{c['p50']:>9.2f}"
            f"{c['p90']:>9.2f}{c['p99']:>9.2f}{e['p50']:>9.2f}{r['load_ms']:>9.1f}"
            f"{_mib(r.get('model_peak_bytes')):>11}{_mib(r.get('peak_rss_bytes')):>10}"
            f"{r['streaming_file_bytes'] / 1e6:>10.2f}"
        )
    m, s = report["model"], report["settings"]
    lines.append(
        "model MiB: resident peak the programs add while loading + streaming (above the "
        "child's baseline); peak MiB: the child's whole peak; files MB: the streaming programs"
    )
    lines.append(
        f"model {m.get('name')} ({m.get('num_parameters')} params), chunk {m['chunk_ms']} ms, "
        f"{s['num_utterances']} utterance(s), {s['audio_seconds']:.1f} s of audio; "
        f"host: {report['device'].get('cpu_model')} ({report['device'].get('cpus_available')} CPUs)"
    )
    return "\n".join(lines)


def plot_runs(report: dict[str, Any], path: str | Path) -> Path:
    """Bar charts (RTF, p90 chunk latency, model-attributable peak memory) over the runs
    (backend x threads) -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    labels = [f"{r['backend']}\n{r['threads']} thr" for r in runs]
    order = list(BACKENDS)
    order += [b for b in dict.fromkeys(r["backend"] for r in runs) if b not in order]
    colors = [_COLORS[order.index(r["backend"]) % len(_COLORS)] for r in runs]  # one per runtime
    panels = [
        ("RTF (lower is better)", [r["rtf"] for r in runs]),
        ("p90 chunk latency (ms)", [r["chunk_latency_ms"]["p90"] for r in runs]),
        (
            "model peak memory (MiB above baseline)",
            [(r.get("model_peak_bytes") or 0) / 2**20 for r in runs],
        ),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.bar(range(len(values)), values, color=colors)
        ax.set_xticks(range(len(values)), labels, fontsize=7, rotation=30, ha="right")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    m = report["model"]
    fig.suptitle(
        f"{m.get('name')} - {m['chunk_ms']} ms chunks - {report['device'].get('cpu_model')}",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
