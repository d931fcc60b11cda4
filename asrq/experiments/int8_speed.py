"""int8 against fp32 speed at several model widths (QAT issue, part 3): where the time goes.

:func:`int8_speed`, per width ``d`` (the mini model's 144 and wider ones; same depth, FFN 4d,
4 heads, the mini recipe's joiner / predictor):

1. a randomly initialised model of that width (speed does not depend on training; the BPE of a
   template checkpoint) exported three times, streaming programs only (:data:`KINDS`): fp32;
   ``int8``, PTQ static int8 calibrated on dev cuts (7-bit weights, per-tensor int8 activations
   in and out of every linear / conv layer; ONNX with ``--onnx-float-outputs``); ``qat-int8``,
   the graph a QAT checkpoint exports with the default flags (every quantizer kept, a quantizer
   per layer input, so onnxruntime fuses every linear layer): the model fake-quantized as the
   compression table's ``qat-int8-ste`` rows, calibrated and fine-tuned for one step
   (:func:`qat_graph_checkpoint`);
2. all benchmarked with ``asrq bench`` (isolated processes, onnxruntime and ExecuTorch, each
   thread count): streaming chunk latency p50 / p90 (encoder + greedy search) and the encoder
   alone, side by side in one run;
3. the onnxruntime streaming encoders profiled (``SessionOptions.enable_profiling``, 1 thread,
   the bench's windows): kernel time per op type after ORT's graph optimizer, so the table shows
   how much of an int8 chunk is integer GEMM and how much is quantize / dequantize / layout.

Writes ``int8_speed.json`` and ``int8_speed.md`` under ``out_dir``; every export and bench lives
in ``out_dir/int8_speed/d<width>/{fp32,int8,qat-int8}`` and is skipped when present (delete the
``bench.json`` files to time all kinds again side by side).
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asrq.utils.io import AsrqError, atomic_write_json, atomic_write_text

WIDTHS: tuple[int, ...] = (144, 256, 384)
PROGRAMS = ["encoder_streaming", "predictor", "joiner"]
#: the exports compared per width (module doc)
KINDS: tuple[str, ...] = ("fp32", "int8", "qat-int8")
#: op types counted as quantization overhead in the profile
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


def width_checkpoint(template: Path, d_model: int, out: Path, seed: int = 0) -> Path:
    """A random-init checkpoint of ``template``'s config at ``d_model`` (FFN 4x, same heads)."""
    import torch

    from asrq.config import ExperimentConfig, from_dict
    from asrq.models import build_model
    from asrq.train.checkpoint import load_checkpoint, model_payload, save_checkpoint

    if out.is_file():
        return out
    ckpt = load_checkpoint(template)
    cfg = from_dict(ExperimentConfig, ckpt["config"], where=f"{template}:config")
    cfg = copy.deepcopy(cfg)
    cfg.qat = None
    cfg.supernet = None
    enc = cfg.model.encoder
    if d_model % enc.num_heads:
        raise AsrqError(f"width {d_model} is not divisible by {enc.num_heads} heads")
    enc.d_model, enc.ffn_dim = d_model, 4 * d_model
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    return save_checkpoint(out, model_payload(model, cfg, ckpt["bpe_model"], step=0))


def qat_graph_checkpoint(fp32: Path, out_dir: Path) -> Path:
    """``out_dir/model.pt``: ``fp32`` fake-quantized as the compression table's ``qat-int8-ste``
    rows (:func:`asrq.experiments.quant.qat_config`), its activation step sizes calibrated on
    training batches and one fine-tuning step taken. Trained step sizes differ, the exported
    graph (and so its speed) does not."""
    from asrq.experiments.quant import Variant, checkpoint_config, qat_config
    from asrq.quant.train import qat_train

    path = out_dir / "model.pt"
    if not path.is_file():
        variant = Variant("qat-int8-ste", "int8", "int8", "ste")
        cfg = qat_config(checkpoint_config(fp32), fp32, out_dir, variant, 1, 1e-4)
        qat_train(cfg, progress=False)
    return path


def ort_profile(
    onnx_path: Path, meta: dict[str, Any], feats: Sequence[np.ndarray], threads: int = 1
) -> dict[str, Any]:
    """Kernel time per op type of the streaming encoder over ``feats``' windows (after 3
    warm-up chunks): ``{"ops": {op: {"ms", "count", "share"}}, "chunks", "qdq_share"}``."""
    import onnxruntime as ort

    from asrq.bench.lean import iter_windows, zero_states

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = str(onnx_path.parent / f"ort_profile_{onnx_path.stem}")
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    chunk = int(meta["model"]["chunk_frames"])
    chunks = 0
    for f in feats:
        states = zero_states(meta)
        for x, x_lens in iter_windows(np.asarray(f, np.float32), chunk):
            out = sess.run(None, dict(zip(names, [x, x_lens, *states], strict=True)))
            states = out[2:]
            chunks += 1
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink(missing_ok=True)
    ops: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    node_events = [
        e
        for e in events
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
    ]
    skip = 3 * len(node_events) // max(chunks, 1)  # the first three chunks warm up
    for e in node_events[skip:]:
        op = e.get("args", {}).get("op_name", "?")
        ops[op][0] += e["dur"] / 1000.0
        ops[op][1] += 1
    total = sum(v[0] for v in ops.values()) or 1.0
    timed = max(chunks - 3, 1)
    table = {
        op: {
            "ms_per_chunk": round(v[0] / timed, 4),
            "count": int(v[1]),
            "share": round(v[0] / total, 4),
        }
        for op, v in sorted(ops.items(), key=lambda kv: -kv[1][0])
    }
    return {
        "ops": table,
        "chunks_timed": timed,
        "kernel_ms_per_chunk": round(total / timed, 4),
        "qdq_share": round(sum(table[o]["share"] for o in QDQ_OPS if o in table), 4),
    }


def _bench_entry(rep: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in rep["runs"]:
        out[f"{r['backend']}@{r['threads']}"] = {
            "chunk_p50_ms": r["chunk_latency_ms"]["p50"],
            "chunk_p90_ms": r["chunk_latency_ms"]["p90"],
            "encoder_p50_ms": r["encoder_latency_ms"]["p50"],
            "encoder_p90_ms": r["encoder_latency_ms"]["p90"],
            "rtf": r["rtf"],
            "streaming_file_bytes": r["streaming_file_bytes"],
        }
    return out


def markdown_table(result: dict[str, Any]) -> str:
    quant = [k for k in KINDS[1:] if any(w.get(k) for w in result["widths"])]
    label = {"int8": "PTQ int8", "qat-int8": "QAT int8"}
    head = "| width | params | runtime @ threads | fp32 encoder p50 ms | fp32 chunk p90 ms |"
    for k in quant:
        head += (
            f" {label[k]} encoder p50 ms | {label[k]} / fp32 (encoder) | {label[k]} chunk p90 ms"
            f" | {label[k]} / fp32 (chunk p90) |"
        )
    lines = [head, "|---|---|---|---|---|" + "---|---|---|---|" * len(quant)]
    for w in result["widths"]:
        for key, f in w["fp32"].items():
            row = (
                f"| {w['d_model']} | {w['params']:,} | {key} | {f['encoder_p50_ms']:.2f} "
                f"| {f['chunk_p90_ms']:.2f} |"
            )
            for k in quant:
                q = w.get(k, {}).get(key)
                row += (
                    f" {q['encoder_p50_ms']:.2f} | {q['encoder_p50_ms'] / f['encoder_p50_ms']:.2f}"
                    f" | {q['chunk_p90_ms']:.2f} | {q['chunk_p90_ms'] / f['chunk_p90_ms']:.2f} |"
                    if q
                    else " | | | |"
                )
            lines.append(row)
    lines += ["", "onnxruntime streaming encoder, 1 thread, kernel time per chunk by op type:", ""]
    lines += ["| width | export | kernel ms / chunk | Q/DQ share | top op types (share) |"]
    lines += ["|---|---|---|---|---|"]
    for w in result["widths"]:
        for kind in KINDS:
            p = w["profile"].get(kind)
            if not p:
                continue
            top = ", ".join(f"{op} {v['share'] * 100:.0f}%" for op, v in list(p["ops"].items())[:6])
            lines.append(
                f"| {w['d_model']} | {kind} | {p['kernel_ms_per_chunk']:.3f} "
                f"| {p['qdq_share'] * 100:.1f}% | {top} |"
            )
    return "\n".join(lines) + "\n"


def int8_speed(
    template: str | Path,
    out_dir: str | Path,
    widths: Sequence[int] = WIDTHS,
    threads: Sequence[int] = (1, 2),
    max_files: int = 5,
    echo: Callable[[str], None] = print,
    bench: bool = True,
) -> dict[str, Any]:
    """Run the comparison (module doc) from the fp32 ``template`` checkpoint's config.
    ``bench=False``: only the exports (they need no quiet machine; the timing does)."""
    from asrq.bench.runner import run_bench
    from asrq.decode.evaluate import load_eval_cuts
    from asrq.experiments.quant import TABLE_MIN_SQNR
    from asrq.export.pipeline import export_model
    from asrq.train.checkpoint import load_checkpoint
    from asrq.utils.host import host_info

    template = Path(template)
    if not template.is_file():
        raise AsrqError(f"{template}: template checkpoint not found")
    d = load_checkpoint(template)["config"]["data"]
    cuts = Path(d["fbank_dir"]) / f"librispeech_cuts_{d.get('dev_split', 'dev-clean')}.jsonl.gz"
    feats = [c.load_features() for c in load_eval_cuts(cuts, max_files)]
    root = Path(out_dir) / "int8_speed"
    result: dict[str, Any] = {
        "schema": "asrq.int8_speed/1",
        "host": host_info(),
        "inputs": f"{len(feats)} dev utterances ({cuts})",
        "int8": "PTQ static int8 (asrq export --quant int8 --onnx-float-outputs)",
        "qat-int8": "QAT int8 graph (qat_graph_checkpoint; asrq export --quant int8, every "
        "quantizer kept)",
        "widths": [],
    }
    for w in widths:
        wdir = root / f"d{w}"
        ckpt = width_checkpoint(template, w, wdir / "model.pt")
        params = int(load_checkpoint(ckpt).get("num_parameters") or 0)
        entry: dict[str, Any] = {"d_model": w, **{k: {} for k in KINDS}, "profile": {}}
        for kind in KINDS:
            ex = wdir / kind
            if not (ex / "metadata.json").is_file():
                echo(f"=== d={w}: export {kind}")
                source = ckpt
                if kind == "qat-int8":
                    source = qat_graph_checkpoint(ckpt, wdir / "qat")
                export_model(
                    source,
                    ex,
                    name=f"d{w}-{kind}",
                    quant=None if kind == "fp32" else "int8",
                    programs=PROGRAMS,
                    onnx_float_outputs=kind == "int8",
                    min_sqnr=TABLE_MIN_SQNR["int8"] if kind == "qat-int8" else None,
                )
            meta = json.loads((ex / "metadata.json").read_text())
            params = params or int(meta["model"].get("num_parameters") or 0)
            if not bench:
                continue
            bench_json = ex / "bench.json"
            if bench_json.is_file():
                rep = json.loads(bench_json.read_text())
            else:
                rep = run_bench(
                    ex,
                    backends=["onnx", "executorch"],
                    threads=list(threads),
                    cuts=cuts,
                    max_files=max_files,
                    out=bench_json,
                    plot=False,
                )
            entry[kind] = _bench_entry(rep)
            entry["profile"][kind] = ort_profile(ex / "encoder_streaming.onnx", meta, feats)
            echo(f"--- d={w} {kind}: " + json.dumps(entry[kind]))
        entry["params"] = params
        if bench:
            result["widths"].append(entry)
        atomic_write_json(Path(out_dir) / "int8_speed.json", result)
    table = markdown_table(result)
    atomic_write_text(Path(out_dir) / "int8_speed.md", table)
    echo(table)
    return result
