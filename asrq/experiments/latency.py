"""Predicted vs measured streaming chunk latency of subnets of a supernet (issue 13, part 4).

For ``num_subnets`` subnets spread over the search space by size (the smallest, the largest and
evenly spaced ones between, by parameter count):

1. **predicted**: a latency table of the parts of those subnets timed through the deployment
   runtime (:class:`asrq.export.latency.RuntimePartTimer`: each part exported as its own small
   program, timed with the runtime's program runner), ``embed + L * layer + head``
   (:meth:`asrq.supernet.latency_table.LatencyTable.predict`);
2. **measured**: each subnet sliced (``asrq slice``), its streaming programs exported
   (``encoder_streaming``, ``predictor``, ``joiner``; ``asrq export``) and benchmarked end to end
   with :func:`asrq.bench.runner.run_bench` (``asrq bench``: same runtime and threads, each run in
   a fresh process, synthetic audio), median chunk latency over ``bench_repeats`` runs of the
   runs' p50s.

Greedy search's cost depends on how many symbols the model emits; the table assumes
``symbols_per_frame`` (default 1.0: an upper bound). The measured rate of each subnet on the
benchmark audio is reported beside it, with the prediction at that rate (from the table's
``details``), so the two sources of error can be told apart.

Writes ``latency_pred_vs_measured.json`` and ``.md`` into ``out_dir`` (and the table, the
part-program cache, the sliced subnets and their exports under it; exports already there are
re-used).
"""

from __future__ import annotations

import datetime as _dt
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from asrq.bench.runner import run_bench, synthetic_audio
from asrq.export.latency import RuntimePartTimer
from asrq.export.pipeline import export_model, version_info
from asrq.runtime.model_dir import read_model_dir
from asrq.supernet.checkpoint import load_supernet, slice_checkpoint
from asrq.supernet.elastic import Supernet
from asrq.supernet.latency_table import LatencyTable, build_latency_table
from asrq.supernet.spec import SearchSpace, SubnetSpec
from asrq.utils.host import host_info
from asrq.utils.io import AsrqError, atomic_write_json, atomic_write_text

#: the programs a streaming benchmark needs
STREAMING_PROGRAMS = ("encoder_streaming", "predictor", "joiner")


def spread_subnets(space: SearchSpace, sn: Supernet, num: int) -> list[SubnetSpec]:
    """``num`` distinct specs spread by parameter count: smallest, largest, evenly between."""
    specs = sorted(space.all_specs(), key=lambda s: (sn.num_params(s), s.short()))
    if num >= len(specs):
        return specs
    if num == 1:
        return [specs[-1]]
    idx = sorted({round(i * (len(specs) - 1) / (num - 1)) for i in range(num)})
    return [specs[i] for i in idx]


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def measured_symbols_per_frame(export_dir: Path, backend: str, seconds: float) -> float:
    """Greedy symbols per encoder frame of the exported model streaming the benchmark's
    synthetic audio."""
    from asrq.decode.search import GreedyState, greedy_advance
    from asrq.decode.streaming import iter_windows
    from asrq.runtime.audio import compute_fbank
    from asrq.runtime.rnnt import ExportedRnnt

    comp = ExportedRnnt.open(export_dir, backend, 1)
    feats = compute_fbank(synthetic_audio(seconds))[None]
    states, search = comp.init_states(1), GreedyState.create(comp, 1)
    frames = 0
    for x, x_lens in iter_windows(feats, torch.tensor([feats.shape[1]]), comp.chunk_frames):
        enc, valid, states = comp.encode_chunk(x, x_lens, states)
        greedy_advance(comp, enc, valid, search)
        frames += int(valid.sum())
    return len(search.tokens()[0]) / max(1, frames)


def _head_at_rate(details: dict[str, float], rate: float) -> float:
    return (
        max(0.0, details["proj_call"] - details["null_call"])
        + details["greedy_blank"]
        + rate * (details["greedy_emit"] - details["greedy_blank"])
    )


def predicted_vs_measured(
    checkpoint: str | Path,
    out_dir: str | Path,
    runtime: str = "executorch",
    threads: int = 1,
    num_subnets: int = 5,
    specs: list[SubnetSpec] | None = None,
    repeats: int = 30,
    bench_repeats: int = 3,
    seconds: float = 8.0,
    symbols_per_frame: float = 1.0,
    table: str | Path | None = None,
    log_fn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the comparison (module doc); returns the report written to
    ``out_dir/latency_pred_vs_measured.json``. ``table``: predict from this runtime table
    instead of building one (it must cover the subnets and name the same runtime)."""
    say = log_fn or (lambda s: None)
    if runtime == "eager":
        raise AsrqError("predicted vs measured compares a deployment runtime: onnx or executorch")
    out = Path(out_dir)
    sup = load_supernet(checkpoint)
    st = sup.config.model.streaming
    sn = Supernet(sup.model, sup.config.model)
    specs = (
        [sup.space.validate(s) for s in specs]
        if specs
        else spread_subnets(sup.space, sn, num_subnets)
    )
    load_before = _load()
    t0 = time.perf_counter()
    if table is None:
        timer = RuntimePartTimer(
            runtime, threads, out / "parts", repeats, symbols_per_frame, log_fn=say
        )
        tab = build_latency_table(
            checkpoint, out / "latency_table.json", threads, repeats, say, timer=timer, specs=specs
        )
    else:
        tab = LatencyTable.load(table)
        tab.check_streaming(st.chunk_frames, st.left_frames)
        if (tab.runtime, tab.threads) != (runtime, threads):
            raise AsrqError(
                f"{table}: timed with {tab.runtime} x{tab.threads}, not {runtime} x{threads}"
            )
    table_seconds = time.perf_counter() - t0
    say(f"table: {len(tab.entries)} entries in {table_seconds:.0f} s")
    rows = []
    for spec in specs:
        name = spec.short()
        sub = out / "subnets" / name
        export_dir = sub / "export"
        t1 = time.perf_counter()
        if not (export_dir / "metadata.json").is_file():
            sliced = slice_checkpoint(checkpoint, spec, sub)
            export_model(
                sliced.path,
                export_dir,
                name=name,
                onnx=runtime == "onnx",
                executorch=runtime == "executorch",
                programs=STREAMING_PROGRAMS,
            )
        export_s = time.perf_counter() - t1
        md = read_model_dir(export_dir)
        p50s, p10s, means, enc_p50s, loads = [], [], [], [], []
        for k in range(bench_repeats):
            loads.append(_load())
            rep = run_bench(
                md,
                [runtime],
                [threads],
                out=sub / f"bench-{k}.json",
                synthetic_seconds=seconds,
                plot=False,
            )
            run = rep["runs"][0]
            p50s.append(run["chunk_latency_ms"]["p50"])
            means.append(run["chunk_latency_ms"]["mean"])
            p10s.append(run["chunk_latency_ms"].get("p10"))
            enc_p50s.append(run["encoder_latency_ms"]["p50"])
        measured = statistics.median(p50s)
        predicted = tab.predict(spec)
        k_embed, k_layer, k_head = tab.keys(spec)
        rate = measured_symbols_per_frame(export_dir, runtime, seconds)
        details = tab.extra.get("details", {}).get(k_head)
        at_rate = (
            tab.entries[k_embed]
            + spec.num_layers * tab.entries[k_layer]
            + _head_at_rate(details, rate)
            if details
            else None
        )
        enc_pred = None
        if details:  # the encoder program's share: subsampling, layers, out_norm + encoder_proj
            tail = max(0.0, details["proj_call"] - details["null_call"])
            enc_pred = tab.entries[k_embed] + spec.num_layers * tab.entries[k_layer] + tail
        row = {
            "subnet": name,
            "spec": spec.to_dict(),
            "params": sn.num_params(spec),
            "predicted_ms": round(predicted, 4),
            "predicted_parts_ms": {
                "embed": round(tab.entries[k_embed], 4),
                "layers": round(spec.num_layers * tab.entries[k_layer], 4),
                "head": round(tab.entries[k_head], 4),
            },
            "measured_chunk_p50_ms": round(measured, 4),
            "measured_chunk_p50_runs_ms": p50s,
            # the least disturbed run / chunks (on a shared machine other processes preempt chunks)
            "measured_chunk_p50_min_ms": min(p50s),
            "measured_chunk_p10_runs_ms": p10s,
            "error_vs_p10_pct": round(
                100.0 * (predicted - statistics.median(p10s)) / statistics.median(p10s), 2
            )
            if None not in p10s
            else None,
            "measured_chunk_mean_runs_ms": means,
            "predicted_encoder_ms": None if enc_pred is None else round(enc_pred, 4),
            "measured_encoder_p50_ms": round(statistics.median(enc_p50s), 4),
            "error_pct": round(100.0 * (predicted - measured) / measured, 2),
            "measured_symbols_per_frame": round(rate, 4),
            "predicted_at_measured_rate_ms": None if at_rate is None else round(at_rate, 4),
            "error_at_measured_rate_pct": None
            if at_rate is None
            else round(100.0 * (at_rate - measured) / measured, 2),
            "export_seconds": round(export_s, 1),
            "load_average_1m": loads,
        }
        rows.append(row)
        say(
            f"{name}: predicted {predicted:.3f} ms, measured {measured:.3f} ms "
            f"({row['error_pct']:+.1f}%), symbols/frame {rate:.2f}"
        )
    errs = [abs(r["error_pct"]) for r in rows]
    report = {
        "schema": "asrq-latency-pred-v1",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "checkpoint": str(checkpoint),
        "runtime": runtime,
        "threads": threads,
        "chunk_frames": st.chunk_frames,
        "chunk_ms": 40 * st.chunk_frames,
        "left_frames": st.left_frames,
        "bench": {
            "audio": f"synthetic {seconds:g} s",
            "repeats": bench_repeats,
            "statistic": "median over runs of the per-run p50 chunk latency",
            "isolated_processes": True,
        },
        "table": {
            "path": tab.source or str(out / "latency_table.json"),
            "entries": len(tab.entries),
            "build_seconds": round(table_seconds, 1),
            "symbols_per_frame": tab.extra.get("symbols_per_frame"),
            **{k: tab.extra[k] for k in ("programs_exported", "export_seconds") if k in tab.extra},
        },
        "device": host_info(),
        "load_average_1m": {"before": load_before, "after": _load()},
        "versions": version_info(),
        "max_abs_error_pct": max(errs),
        "mean_abs_error_pct": round(statistics.mean(errs), 2),
        "within_15pct": sum(e <= 15.0 for e in errs),
        "subnets": rows,
    }
    atomic_write_json(out / "latency_pred_vs_measured.json", report)
    atomic_write_text(out / "latency_pred_vs_measured.md", markdown_table(report))
    return report


def markdown_table(report: dict[str, Any]) -> str:
    """The report's subnets as a markdown table."""
    head = (
        f"Predicted (per-part table) vs measured (end-to-end `asrq bench`) streaming chunk "
        f"latency, {report['runtime']}, {report['threads']} thread(s), chunk "
        f"{report['chunk_ms']} ms, on {report['device'].get('cpu_model')} "
        f"(load {report['load_average_1m']['before']} -> {report['load_average_1m']['after']}).\n\n"
        "| subnet | params | predicted ms | measured p50 ms | error | measured p10 ms | error | "
        "symbols/frame | predicted at that rate | error | encoder predicted / measured p50 ms |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    lines = []
    for r in report["subnets"]:
        at, ep = r["predicted_at_measured_rate_ms"], r.get("predicted_encoder_ms")
        rate = f"{at:.3f} | {r['error_at_measured_rate_pct']:+.1f}%" if at is not None else "- | -"
        enc = f"{ep:.3f} / {r['measured_encoder_p50_ms']:.3f}" if ep is not None else "-"
        p10 = r.get("error_vs_p10_pct")
        low = (
            f"{statistics.median(r['measured_chunk_p10_runs_ms']):.3f} | {p10:+.1f}%"
            if p10 is not None
            else "- | -"
        )
        lines.append(
            f"| {r['subnet']} | {r['params']:,} | {r['predicted_ms']:.3f} | "
            f"{r['measured_chunk_p50_ms']:.3f} | {r['error_pct']:+.1f}% | {low} | "
            f"{r['measured_symbols_per_frame']:.2f} | {rate} | {enc} |"
        )
    return head + "\n".join(lines) + "\n"


def untrained_supernet(
    config: str | Path, out: str | Path, overrides: tuple[str, ...] = (), seed: int = 0
) -> Path:
    """Write a randomly initialised supernet checkpoint of the experiment YAML ``config`` (with
    a BPE model of its vocabulary size trained on the bundled sentences) at ``out``: latency
    does not depend on the weights, so timing a search space needs no training run. Its greedy
    search emits whatever random weights emit (the report measures the rate)."""
    import tempfile

    from asrq.config import load_config
    from asrq.data.bpe import train_bpe
    from asrq.models import build_model
    from asrq.train.checkpoint import model_payload, save_checkpoint, sentencepiece_from_bytes

    cfg = load_config(config, list(overrides))
    if cfg.supernet is None:
        raise AsrqError(f"{config}: no supernet section")
    text = (Path(__file__).resolve().parents[1] / "resources" / "kjv_sentences.txt").read_text()
    with tempfile.TemporaryDirectory(prefix="asrq-bpe-") as tmp:
        bpe = train_bpe(text.splitlines()[:5000], tmp, cfg.data.vocab_size).read_bytes()
    cfg.model.vocab_size = sentencepiece_from_bytes(bpe).get_piece_size()
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    return save_checkpoint(Path(out), model_payload(model, cfg, bpe, step=0))
