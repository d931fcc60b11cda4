"""Train several model variants with the same step budget and compare them (issue: model breadth).

Each variant is the recipe config plus a few dotted overrides (``model.encoder.type=stateformer``,
``model.encoder.fold=2``, ``model.head=ctc_attention``...). For each one :func:`compare_models`
runs the recipe stages ``train, decode, export, bench, transcribe`` in ``<out_dir>/<name>/`` through
:func:`asrq.pipeline.run_pipeline` (so a re-run skips finished variants), then collects one
record per variant into ``models.json`` and a markdown table ``models.md``.

Every WER carries its 95% bootstrap interval over utterances (``wer_test_clean``,
``wer_test_other``, ``wer_dev``: ``{"wer", "lo", "hi", ...}``), and every variant but the
baseline (the first one) its paired-bootstrap difference to the baseline on the same
utterances (``vs_baseline``: ``{"test_clean": {"diff", "lo", "hi", "p_better", ...}, ...}``,
percentage points, negative = the variant is better). Dev selects, test reports: the driver
chooses nothing; whoever picks a variant from the table picks it on ``wer_dev``, and the test
columns are the report.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asrq.config import ExperimentConfig, apply_overrides, from_dict, to_dict
from asrq.utils.io import atomic_write_json, atomic_write_text


@dataclass
class Variant:
    name: str
    overrides: list[str] = field(default_factory=list)


#: The issue's five models: Conformer RNN-T, Stateformer RNN-T, Conformer CTC/attention, and
#: the first two with fold 2.
DEFAULT_VARIANTS: tuple[Variant, ...] = (
    Variant("conformer_rnnt", []),
    Variant("stateformer_rnnt", ["model.encoder.type=stateformer"]),
    Variant("conformer_ctc_att", ["model.head=ctc_attention", "decode.method=attention_rescoring"]),
    Variant("conformer_rnnt_fold2", ["model.encoder.fold=2"]),
    Variant("stateformer_rnnt_fold2", ["model.encoder.type=stateformer", "model.encoder.fold=2"]),
)

COLUMNS = (
    ("name", "model"),
    ("encoder", "encoder"),
    ("head", "head"),
    ("fold", "fold"),
    ("params", "params"),
    ("encoder_params", "encoder params"),
    ("pte_bytes", ".pte bytes"),
    ("onnx_bytes", "ONNX bytes"),
    ("wer_test_clean", "WER test-clean % [95% CI]"),
    ("diff_test_clean", "vs baseline, pp [95% CI]"),
    ("wer_test_other", "WER test-other % [95% CI]"),
    ("wer_dev", "WER dev %"),
    ("wer_test_streaming", "WER streaming %"),
    ("rtf_onnx_1thread", "RTF onnx 1t"),
    ("rtf_executorch_1thread", "RTF ET 1t"),
    ("chunk_latency_p90_ms", "chunk p90 ms (onnx 1t)"),
    ("train_minutes", "train min"),
)


def variant_config(
    base: ExperimentConfig, variant: Variant, out_dir: Path, steps: int
) -> ExperimentConfig:
    data = apply_overrides(
        copy.deepcopy(to_dict(base)),
        [
            *variant.overrides,
            f"train.exp_dir={out_dir / variant.name}",
            f"train.max_steps={steps}",
            "train.max_minutes=0",
        ],
    )
    return from_dict(ExperimentConfig, data, where=f"variant {variant.name}")


def encoder_parameters(model_path: Path) -> int:
    from asrq.models.conformer import count_parameters
    from asrq.train.checkpoint import load_model

    return count_parameters(load_model(model_path).model.encoder)


def record(variant: Variant, cfg: ExperimentConfig, summary: dict[str, Any]) -> dict[str, Any]:
    exp_dir = Path(cfg.train.exp_dir)
    return {
        "name": variant.name,
        "overrides": variant.overrides,
        "encoder": cfg.model.encoder.type,
        "head": cfg.model.head,
        "fold": cfg.model.encoder.fold,
        "params": summary.get("params"),
        "encoder_params": encoder_parameters(exp_dir / "model.pt"),
        "onnx_bytes": summary.get("onnx_bytes"),
        "pte_bytes": summary.get("pte_bytes"),
        "decode_method": cfg.decode.method,
        "wer_test": summary.get("wer_test"),
        "wer_test_clean": summary.get("wer_test_clean"),
        "wer_test_other": summary.get("wer_test_other"),
        "wer_dev": summary.get("wer_dev"),
        "wer_real": summary.get("wer_real"),
        "wer_test_streaming": summary.get("wer_test_streaming"),
        "rtf_onnx_1thread": summary.get("rtf_onnx_1thread"),
        "rtf_executorch_1thread": summary.get("rtf_executorch_1thread"),
        "chunk_latency_p90_ms": summary.get("chunk_latency_p90_ms_onnx_1thread"),
        "chunk_latency_p90_ms_executorch": summary.get("chunk_latency_p90_ms_executorch_1thread"),
        "train_steps": summary.get("train_steps"),
        "train_minutes": summary.get("train_minutes"),
        "transcribed_real_files": len(summary.get("transcripts_real") or {}),
        "exp_dir": str(exp_dir),
    }


#: ``vs_baseline`` keys -> the summary entry whose decode JSON is paired
PAIRED: tuple[tuple[str, str], ...] = (
    ("dev", "wer_dev"),
    ("test_clean", "wer_test_clean"),
    ("test_other", "wer_test_other"),
)


def add_paired(records: list[dict[str, Any]]) -> None:
    """``vs_baseline`` for every record but the first (the baseline): paired bootstrap of
    ``WER(variant) - WER(baseline)`` on each split both decoded (from their decode JSONs)."""
    from asrq.decode.bootstrap import paired_files

    base = records[0]
    for r in records[1:]:
        r["vs_baseline"] = {"baseline": base["name"]}
        for name, key in PAIRED:
            a, b = r.get(key), base.get(key)
            if isinstance(a, dict) and isinstance(b, dict) and "json" in a and "json" in b:
                d = paired_files(a["json"], b["json"])
                r["vs_baseline"][name] = {
                    k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()
                }


def _cell(r: dict[str, Any], key: str) -> Any:
    if key == "diff_test_clean":
        return (r.get("vs_baseline") or {}).get("test_clean")
    return r.get(key)


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, dict) and "diff" in v:
            return f"{v['diff']:+.2f} [{v['lo']:+.2f}, {v['hi']:+.2f}]"
        if isinstance(v, dict) and "wer" in v:
            return f"{v['wer']:.2f} [{v['lo']:.2f}, {v['hi']:.2f}]"
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"
        if isinstance(v, int) and v >= 10_000:
            return f"{v:,}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(_cell(r, k)) for k, _ in COLUMNS) + " |" for r in records]
    return "\n".join(lines) + "\n"


def compare_models(
    base: ExperimentConfig,
    out_dir: str | Path,
    variants: Sequence[Variant] = DEFAULT_VARIANTS,
    steps: int = 600,
    echo: Callable[[str], None] = print,
    real_audio_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Train/decode/export/bench every variant for ``steps`` steps; writes ``models.json`` and
    ``models.md`` in ``out_dir`` (``exp/mini`` for the recipe) and returns the records."""
    from asrq.pipeline import run_pipeline

    out_dir = Path(out_dir)
    runs_dir = out_dir / "models"
    records: list[dict[str, Any]] = []
    for v in variants:
        cfg = variant_config(base, v, runs_dir, steps)
        echo(f"=== {v.name}: {' '.join(v.overrides) or '(recipe config)'}")
        stages = ["train", "decode", "export", "bench", "transcribe"]
        summary = run_pipeline(
            cfg, stages, synthesize=False, echo=echo, real_audio_dir=real_audio_dir
        )
        records.append(record(v, cfg, summary))
        add_paired(records)
        atomic_write_json(out_dir / "models.json", records)  # partial results survive a stop
    table = markdown_table(records)
    atomic_write_text(out_dir / "models.md", table)
    echo(table)
    echo(json.dumps({"models_json": str(out_dir / "models.json")}))
    return records
