"""Export parity of the compression table's QAT int8 rows over the whole test set: the streaming
encoder program (onnxruntime and ExecuTorch) against the fake-quant eager model on every
test-clean utterance, window after window (:func:`asrq.quant.sensitivity.parity_over_utterances`).
The export's own parity check runs three windows of two dev utterances; this says how often,
over real speech, a float rounding tie sends one value to the other level and how far the
programs then sit from the model; and, as the floor to read that against, the eager model
against itself on chunks moved by 1e-6 (:data:`FLOOR`). Reads the rows of
:func:`asrq.experiments.quant.compression_table`; writes ``<out>/quant_parity.json`` / ``.md``
(each row's result is kept in its directory, ``parity_test.json``, and reused while its export
is unchanged)."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from asrq.experiments.quant import SPLITS, Base, Row, _cuts, checkpoint_config, variants
from asrq.utils.io import AsrqError, atomic_write_json, atomic_write_text

BACKENDS = ("onnx", "executorch")
#: the eager model against itself on fbank chunks scaled by ``1 + 1e-6 N(0, 1)``
#: (:func:`asrq.quant.sensitivity.perturbed_runner`): the floor the programs' parity reads against
FLOOR = "floor"


def _row_parity(row: Row, keys: Sequence[str]) -> dict[str, Any]:
    import torch

    from asrq.decode.evaluate import load_eval_cuts
    from asrq.export.heads import export_head
    from asrq.export.quant import quant_plan
    from asrq.quant.sensitivity import DEFAULT_REL, parity_over_utterances, perturbed_runner
    from asrq.quant.train import load_qat_model
    from asrq.runtime.backends import open_programs

    loaded = load_qat_model(row.checkpoint)
    cfg = loaded.config
    model = quant_plan("int8", loaded).model.eval()  # the fake-quant model the export used
    s = cfg.model.streaming
    _, head = export_head(model)
    cuts = load_eval_cuts(_cuts(cfg, dict(SPLITS)["test_clean"]))
    utts = [(c.id, torch.from_numpy(c.load_features())) for c in cuts]
    out: dict[str, Any] = {"checkpoint": str(row.checkpoint), "export": str(row.export_dir)}
    for key in keys:
        backend = "onnx" if key == FLOOR else key  # the floor: the eager wrapper ONNX exports
        spec = head.program_specs(model, s.chunk_frames, s.left_frames, backend, 750)
        enc = spec["encoder_streaming"]
        if key == FLOOR:
            run = perturbed_runner(enc, DEFAULT_REL, seed=0)
        else:
            run = open_programs(row.export_dir, backend, threads=1).run
        out[key] = parity_over_utterances(enc, run, key, utts)
        if key == FLOOR:
            out[key]["rel"] = DEFAULT_REL
    return out


def _mtime(row: Row) -> float:
    return (row.export_dir / "metadata.json").stat().st_mtime


def parity_table(
    bases: Sequence[Base],
    out: str | Path = "exp/mini",
    only: Sequence[str] = (),
    backends: Sequence[str] = BACKENDS,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Whole-test-set parity of every exported QAT int8 row of ``bases`` (``only``: these
    variants); written to ``<out>/quant_parity.json`` / ``.md``."""
    out = Path(out)
    names = [v.name for v in variants() if v.quant == "int8" and v.qat_dtype]
    bad = sorted(set(only) - set(names))
    if bad:
        raise AsrqError(f"unknown variant(s) {bad}; the QAT int8 rows are {names}")
    bad_b = sorted(set(backends) - set(BACKENDS))
    if bad_b:
        raise AsrqError(f"unknown backend(s) {bad_b}; choose from {list(BACKENDS)}")
    chosen = list(only) or names
    rows: list[dict[str, Any]] = []
    for base in bases:
        checkpoint_config(Path(base.checkpoint))  # refuses QAT / supernet checkpoints
        for v in variants():
            if v.name not in chosen:
                continue
            row = Row(out / "quant", base, v)
            if not row.exported():
                log(f"--- {base.name} / {v.name}: not exported, skipped")
                continue
            log(f"=== {base.name} / {v.name}")
            cache = row.dir / "parity_test.json"  # per row, so bases can run in parallel
            rec = json.loads(cache.read_text()) if cache.is_file() else {}
            if rec.get("export_mtime") != _mtime(row):
                rec = {}
            missing = [k for k in (*backends, FLOOR) if k not in rec]
            if missing:
                rec = {**rec, "export_mtime": _mtime(row), **_row_parity(row, missing)}
                atomic_write_json(cache, rec)
            rows.append({"base": base.name, "variant": v.name, **rec})
            log(markdown(rows[-1:]).splitlines()[-1])
    report = {
        "schema": "asrq-quant-parity-v1",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "rows": rows,
    }
    atomic_write_json(out / "quant_parity.json", report)
    atomic_write_text(out / "quant_parity.md", markdown(rows))
    return report


def _cell(p: dict[str, Any] | None) -> str:
    if not p:
        return " | | | "
    q = p["chunk_db_quantiles"]
    return (
        f"{p['utterances_with_a_tie']} / {p['utterances']} | "
        f"{p['chunks_before_first_tie']} / {p['chunks']} | "
        f"{q['min']} / {q['p01']} / {q['p10']} / {q['p50']} | "
        f"{100 * p['share_chunks_ge_30db']:.1f}%"
    )


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    head = "| model | variant |"
    sub = "|---|---|"
    keys = (*BACKENDS, FLOOR)
    for b in keys:
        tag = {"onnx": "ORT", "executorch": "ET", FLOOR: "eager, input x (1 + 1e-6 N)"}[b]
        head += (
            f" {tag}: utterances with a tie | {tag}: chunks before the first tie | "
            f"{tag}: chunk SQNR dB min / p1 / p10 / p50 | {tag}: chunks >= 30 dB |"
        )
        sub += "---|---|---|---|"
    lines = [
        f"| {r['base']} | {r['variant']} | " + " | ".join(_cell(r.get(b)) for b in keys) + " |"
        for r in rows
    ]
    return head + "\n" + sub + "\n" + "\n".join(lines) + "\n"
