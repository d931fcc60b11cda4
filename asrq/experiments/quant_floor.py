"""The noise floor of the compression table's QAT int8 rows (:mod:`asrq.quant.sensitivity`):
for each trained fake-quant model, the streaming encoder's SQNR and the test-clean greedy WER
against itself under a 1e-6 relative perturbation of its fbank input, beside the exported
programs' parity (SQNR, transcripts) against the same model. An fp32 base is the control (a
float model has no floor). Reads the rows of :func:`asrq.experiments.quant.compression_table`
(``<out>/quant/<base>/<variant>/``); writes ``<out>/quant_floor.json`` and ``.md``."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from asrq.experiments.quant import SPLITS, Base, Row, _cuts, _d, checkpoint_config, variants
from asrq.utils.io import AsrqError, atomic_write_json, atomic_write_text


def _speech(cfg: Any) -> Any:
    """The fbank frames of the last dev utterance (what the export's parity checks run on)."""
    import torch

    from asrq.decode.evaluate import load_eval_cuts

    cut = load_eval_cuts(_cuts(cfg, "dev_split"))[-2]
    return torch.from_numpy(cut.load_features())


def _row_floor(row: Row | None, checkpoint: Path, rel: float, seeds: Sequence[int]) -> dict:
    from asrq.export.heads import export_head
    from asrq.quant.sensitivity import output_floor, transcript_floor
    from asrq.quant.train import load_qat_model
    from asrq.train.checkpoint import load_model

    quantized = row is not None
    loaded = load_qat_model(checkpoint) if quantized else load_model(checkpoint)
    loaded.model.eval()
    cfg = loaded.config
    s = cfg.model.streaming
    _, head = export_head(loaded.model)
    spec = head.program_specs(loaded.model, s.chunk_frames, s.left_frames, "executorch", 750)
    test = _cuts(cfg, dict(SPLITS)["test_clean"])
    rec: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "encoder_sqnr_db": output_floor(spec["encoder_streaming"], _speech(cfg), rel, seeds),
        "test_clean": transcript_floor(loaded, test, rel, seeds, threads=1, other_threads=2),
    }
    if quantized and row.exported():
        meta = json.loads((row.export_dir / "metadata.json").read_text())
        rec["export_parity_sqnr_db"] = {
            b: v.get("encoder_streaming") for b, v in meta["parity"]["sqnr_db"].items()
        }
    return rec


def floor_table(
    bases: Sequence[Base],
    out: str | Path = "exp/mini",
    rel: float = 1e-6,
    seeds: Sequence[int] = (0, 1),
    only: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The floor of every QAT int8 row of ``bases`` (``only``: these variants) and of each fp32
    base (control); written to ``<out>/quant_floor.json`` / ``.md``."""
    out = Path(out)
    names = [v.name for v in variants() if v.quant == "int8" and v.qat_dtype]
    bad = sorted(set(only) - set(names))
    if bad:
        raise AsrqError(f"unknown variant(s) {bad}; the QAT int8 rows are {names}")
    rows: list[dict[str, Any]] = []
    for base in bases:
        checkpoint_config(Path(base.checkpoint))  # refuses QAT / supernet checkpoints
        log(f"=== {base.name} / fp32 (control)")
        rows.append(
            {"base": base.name, "variant": "fp32", **_row_floor(None, base.checkpoint, rel, seeds)}
        )
        for v in variants():
            if v.name not in names or (only and v.name not in only):
                continue
            row = Row(out / "quant", base, v)
            if not row.checkpoint.is_file():
                log(f"--- {base.name} / {v.name}: no QAT checkpoint, skipped")
                continue
            log(f"=== {base.name} / {v.name}")
            rows.append(
                {
                    "base": base.name,
                    "variant": v.name,
                    **_row_floor(row, row.checkpoint, rel, seeds),
                }
            )
            log(markdown(rows[-1:]).splitlines()[-1])
    report = {
        "schema": "asrq-quant-floor-v1",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "rel": rel,
        "seeds": list(seeds),
        "rows": rows,
    }
    atomic_write_json(out / "quant_floor.json", report)
    atomic_write_text(out / "quant_floor.md", markdown(rows))
    return report


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "| model | variant | eager encoder SQNR dB, perturbed vs not (per seed) | export parity "
        "SQNR dB ORT / ET | test WER % (1 thread) | perturbed - unperturbed WER, pp [paired 95% "
        "CI] per seed | 2 threads - 1 thread WER, pp [paired 95% CI] |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        t = r["test_clean"]
        par = r.get("export_parity_sqnr_db") or {}
        runs = "; ".join(_d(x["minus_reference"]) for x in t["perturbed"])
        th = _d(t["other_threads"]["minus_reference"]) if t.get("other_threads") else ""
        sq = " / ".join(
            f"{v:.1f}" if isinstance(v, float) else str(v) for v in r["encoder_sqnr_db"]
        )
        p = " / ".join(str(par.get(b, "")) for b in ("onnx", "executorch")) if par else ""
        lines.append(
            f"| {r['base']} | {r['variant']} | {sq} | {p} | {t['reference_wer']:.2f} | {runs} "
            f"| {th} |"
        )
    return head + "\n".join(lines) + "\n"
