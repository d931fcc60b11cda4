"""What ``--onnx-float-outputs`` buys and costs on the compression table's QAT int8 rows: the
default ONNX int8 export (every quantizer of the trained model) against the one whose linear
layers write float (their output Q/DQ pairs dropped:
:func:`asrq.export.quant.without_output_quant`).

Per row (``<out>/quant/<base>/qat-int8-<estimator>/``): the float-outputs ONNX programs are
exported to ``export-onnx-float-outputs/`` (streaming programs, ONNX only) and scored on
test-clean through onnxruntime (``scores-onnx-float-outputs.json``); the table prints both
exports' WER minus the fake-quant eager model's (paired intervals) and their chunk latency,
benchmarked side by side in one pass (1 thread, alternating the two exports ``rounds`` times).
Writes ``<out>/quant_onnx_outputs.json`` and ``.md``."""

from __future__ import annotations

import datetime as _dt
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from asrq.experiments.quant import (
    SPLITS,
    STREAMING_PROGRAMS,
    Base,
    Row,
    _cuts,
    _d,
    _entry,
    _paired,
    checkpoint_config,
    variants,
)
from asrq.utils.io import atomic_write_json, atomic_write_text

FAST_DIR = "export-onnx-float-outputs"
FAST_SCORES = "scores-onnx-float-outputs.json"


def _export_fast(row: Row) -> Path:
    from asrq.export.pipeline import export_model

    out = row.dir / FAST_DIR
    if not (out / "metadata.json").is_file():
        export_model(
            row.checkpoint,
            out,
            name=f"{row.base.name}-{row.variant.name}-onnx-float-outputs",
            quant="int8",
            executorch=False,
            programs=STREAMING_PROGRAMS,
            onnx_float_outputs=True,
        )
    return out


def _score_fast(row: Row, cfg: Any, export_dir: Path) -> dict[str, Any]:
    from asrq.runtime.evaluate import evaluate_export

    path = row.dir / FAST_SCORES
    if path.is_file():
        return json.loads(path.read_text())
    res = evaluate_export(
        export_dir, _cuts(cfg, dict(SPLITS)["test_clean"]), "onnx", streaming=True
    )
    out = {"export": {"test_clean": _entry(res)}}
    atomic_write_json(path, out)
    return out


def _p90(export_dir: Path, cuts: Path, tag: str) -> float:
    from asrq.bench.runner import run_bench

    rep = run_bench(
        export_dir,
        backends=["onnx"],
        threads=[1],
        cuts=cuts,
        max_files=5,
        out=export_dir / f"bench-{tag}.json",
        plot=False,
    )
    return float(rep["runs"][0]["chunk_latency_ms"]["p90"])


def onnx_outputs_table(
    bases: Sequence[Base],
    out: str | Path = "exp/mini",
    rounds: int = 2,
    bench: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Export, score and (``bench``) time the float-outputs variant of every QAT int8 row."""
    out = Path(out)
    rows = []
    for base in bases:
        cfg = checkpoint_config(Path(base.checkpoint))
        for v in variants():
            if v.quant != "int8" or not v.qat_dtype:
                continue
            row = Row(out / "quant", base, v)
            if not (row.exported() and row.scores.is_file()):
                log(f"--- {base.name} / {v.name}: not exported and scored yet, skipped")
                continue
            log(f"=== {base.name} / {v.name}")
            fast_dir = _export_fast(row)
            fast = _score_fast(row, cfg, fast_dir)["export"]["test_clean"]
            scores = json.loads(row.scores.read_text())
            eager, kept = scores["eager"]["test_clean"], scores["export"]["test_clean"]
            rec: dict[str, Any] = {
                "base": base.name,
                "variant": v.name,
                "eager_wer": eager["wer"],
                "all_quantizers": {"wer": kept["wer"], "minus_eager": _paired(kept, eager)},
                "float_outputs": {"wer": fast["wer"], "minus_eager": _paired(fast, eager)},
            }
            if bench:
                cuts = _cuts(cfg, "dev_split")
                p90s: dict[str, list[float]] = {"all_quantizers": [], "float_outputs": []}
                for k in range(rounds):
                    p90s["all_quantizers"].append(_p90(row.export_dir, cuts, f"r{k}"))
                    p90s["float_outputs"].append(_p90(fast_dir, cuts, f"r{k}"))
                for key, vals in p90s.items():
                    rec[key]["ort_chunk_p90_ms"] = vals
                    rec[key]["ort_chunk_p90_ms_median"] = round(statistics.median(vals), 4)
            rows.append(rec)
            log(markdown(rows[-1:]).splitlines()[-1])
    report = {
        "schema": "asrq-quant-onnx-outputs-v1",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "bench": {"runtime": "onnxruntime", "threads": 1, "rounds": rounds, "utterances": 5}
        if bench
        else None,
        "rows": rows,
    }
    atomic_write_json(out / "quant_onnx_outputs.json", report)
    atomic_write_text(out / "quant_onnx_outputs.md", markdown(rows))
    return report


def _cell(d: dict[str, Any]) -> str:
    return f"{d['wer']:.2f} ({_d(d['minus_eager'])})"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "| model | variant | eager WER % | ONNX, every quantizer: WER (- eager [paired 95% CI]) | "
        "ONNX, float linear outputs: WER (- eager) | ORT p90 ms every / float outputs |\n"
        "|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        a, f = r["all_quantizers"], r["float_outputs"]
        t = (
            f"{a['ort_chunk_p90_ms_median']:.2f} / {f['ort_chunk_p90_ms_median']:.2f}"
            if "ort_chunk_p90_ms_median" in a
            else ""
        )
        lines.append(
            f"| {r['base']} | {r['variant']} | {r['eager_wer']:.2f} | {_cell(a)} | {_cell(f)} "
            f"| {t} |"
        )
    return head + "\n".join(lines) + "\n"
