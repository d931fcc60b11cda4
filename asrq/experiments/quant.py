"""The compression table (QAT issue, part 4): fp32, PTQ and QAT (each estimator) at int8 and
int4, for several trained fp32 models (the plain demo model, the largest and the smallest subnet
sliced from the supernet), every row an *exported* model directory measured through its runtime.

:func:`compression_table`, per base model and :class:`Variant`:

1. ``fp32-ft`` fine-tunes the base in fp32 with the same steps and rate as QAT (what the extra
   steps alone buy a model that is still improving: the fair baseline of the QAT rows, whose
   ``diff_ft_*`` is *QAT minus fp32-ft*); ``qat-*`` variants fine-tune the base checkpoint
   with :func:`asrq.quant.train.qat_train`
   (``train.max_steps`` = ``steps``, fine-tuning ``lr``, no weight averaging: the EMA of a
   short run would be mostly the fp32 start); int8: 7-bit weights (onnxruntime's u8s8 kernels on
   x86 without VNNI), per-tensor int8 activations in and out (the ONNX programs drop the
   output quantizers); int4: grouped (32) int4 weights of every linear layer, a short last
   group where the inputs do not divide by 32 (``int4_unaligned: pad``: d=144), no
   activation quantizers (8da4w quantizes activations dynamically per token);
2. every variant is exported with :func:`asrq.export.pipeline.export_model` (``fp32``: no
   ``quant``; ``*-int8``: ``--quant int8``, PTQ calibrated on dev; ``*-int4``: ``--quant w4a8``),
   the streaming programs only (``encoder_streaming``, ``predictor``, ``joiner``: what a device
   runs), ONNX and ExecuTorch, each with the export's own parity / SQNR check;
3. scores the ONNX files on dev and test-clean, streaming greedy
   (:func:`asrq.runtime.evaluate.evaluate_export`), each WER with its 95% bootstrap interval and
   the paired interval of *variant minus fp32* on the same utterances; QAT rows also score
   their eager fake-quant model, and QAT int8 rows the model the ONNX programs are built from
   (without the linears' output quantizers): the parity in WER points;
4. benchmarks every export at 1 thread in onnxruntime and ExecuTorch
   (:func:`asrq.bench.runner.run_bench`, isolated processes): chunk latency p90 and RTF.

Writes ``quant.json`` (rows + settings + host), ``quant.md`` and ``quant_size_wer.png``.
Everything per row lives under ``out_dir/quant/<base>/<variant>/`` and is skipped when done, so
an interrupted run continues. The benchmark is its own stage (``stages``), to be run on a quiet
machine after the rest.

Dev selects, test reports: :func:`choose_lr` picks the fine-tuning rate on dev WER of the eager
QAT model; nothing else looks at test.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asrq.config import ExperimentConfig, from_dict
from asrq.utils.io import AsrqError, atomic_write_json, atomic_write_text

ESTIMATORS: tuple[str, ...] = ("ste", "noise", "squat")
STAGES: tuple[str, ...] = ("qat", "export", "score", "bench")
STREAMING_PROGRAMS = ["encoder_streaming", "predictor", "joiner"]
#: the table's SQNR bound for the int8 exports (the scheme's own is 30 dB): a trained mini model's
#: int8 streaming encoder measured 28-29 dB against its fake-quant eager model, and the table
#: records each export's measured SQNR beside its WER parity instead of failing the row
TABLE_MIN_SQNR = {"int8": 25.0}
SPLITS: tuple[tuple[str, str], ...] = (("dev", "dev_split"), ("test_clean", "test_split"))


@dataclass(frozen=True)
class Variant:
    """One row kind: ``quant`` the export scheme (None: fp32), ``qat_dtype`` the QAT weight
    dtype (None: no fine-tuning), ``estimator`` the QAT gradient estimator."""

    name: str
    quant: str | None = None
    qat_dtype: str | None = None
    estimator: str | None = None


def variants(estimators: Sequence[str] = ESTIMATORS) -> list[Variant]:
    """fp32, fp32 fine-tuned as long as QAT (no quantizers: what the extra steps alone buy),
    PTQ int8, QAT int8 per estimator, PTQ int4, QAT int4 per estimator."""
    out = [Variant("fp32"), Variant("fp32-ft", None, "fp32"), Variant("ptq-int8", "int8")]
    out += [Variant(f"qat-int8-{e}", "int8", "int8", e) for e in estimators]
    out.append(Variant("ptq-int4", "w4a8"))
    out += [Variant(f"qat-int4-{e}", "w4a8", "int4", e) for e in estimators]
    return out


@dataclass(frozen=True)
class Base:
    """A trained fp32 model of the table: ``name`` (row label) and its ``checkpoint``."""

    name: str
    checkpoint: Path


#: the table's base models (``NAME=CHECKPOINT``): the demo model and the deploy-many slices
DEFAULT_BASES: tuple[str, ...] = (
    "demo=exp/mini/model.pt",
    "largest=exp/mini/todm/slices/L8-d144/model.pt",
    "smallest=exp/mini/todm/slices/L4-d96/model.pt",
)


def parse_bases(specs: Sequence[str] = ()) -> list[Base]:
    """``NAME=CHECKPOINT`` strings (default :data:`DEFAULT_BASES`) -> bases."""
    out = []
    for b in specs or DEFAULT_BASES:
        name, sep, ckpt = b.partition("=")
        if not sep or not name or not ckpt:
            raise AsrqError(f"--base {b!r}: expected NAME=CHECKPOINT")
        out.append(Base(name, Path(ckpt)))
    return out


def base_option() -> Any:
    """The recipes' repeatable ``--base NAME=CKPT`` click option (into ``bases``)."""
    import click

    return click.option(
        "--base",
        "bases",
        multiple=True,
        metavar="NAME=CKPT",
        help=f"An fp32 model of the table (repeatable) [default: {' '.join(DEFAULT_BASES)}].",
    )


def split_list(values: Sequence[str]) -> list[str]:
    """Repeated and / or comma-separated option values -> one list."""
    return [v.strip() for o in values for v in o.split(",") if v.strip()]


def checkpoint_config(path: Path) -> ExperimentConfig:
    from asrq.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    if ckpt.get("config", {}).get("qat") is not None:
        raise AsrqError(f"{path}: a QAT checkpoint; the table starts from fp32 checkpoints")
    cfg = from_dict(ExperimentConfig, ckpt["config"], where=f"{path}:config")
    if cfg.supernet is not None:
        raise AsrqError(
            f"{path}: a supernet checkpoint; slice the subnets first (`asrq slice`) and pass them"
        )
    return cfg


def qat_config(
    base_cfg: ExperimentConfig,
    init: Path,
    exp_dir: Path,
    variant: Variant,
    steps: int,
    lr: float,
) -> ExperimentConfig:
    """The QAT fine-tuning config of ``variant`` from the base model's own config."""
    from asrq.quant.config import QatConfig, QuantConfig

    assert variant.qat_dtype is not None
    cfg = copy.deepcopy(base_cfg)
    t = cfg.train
    t.exp_dir = str(exp_dir)
    t.max_steps, t.max_minutes, t.eval_every_minutes = steps, 0.0, 0.0
    t.save_every = max(steps, 1)
    t.average_decay = 0.0  # the final weights: an EMA over a short run is mostly the start
    t.optim.lr = lr
    t.optim.warmup_batches = min(t.optim.warmup_batches, max(1.0, steps / 10))
    if variant.qat_dtype == "fp32":  # the same fine-tuning without quantizers
        cfg.qat = None
        return cfg
    assert variant.estimator is not None
    if variant.qat_dtype == "int8":
        quant = QuantConfig(weight_dtype="int8", weight_qmax=63, estimator=variant.estimator)
    else:
        quant = QuantConfig(
            weight_dtype="int4",
            int4_unaligned="pad",
            activations=False,
            outputs=False,
            estimator=variant.estimator,
        )
    cfg.qat = QatConfig(init=str(init), quant=quant)
    return cfg


def _cuts(cfg: ExperimentConfig, split_attr: str) -> Path:
    d = cfg.data
    path = Path(d.fbank_dir) / f"librispeech_cuts_{getattr(d, split_attr)}.jsonl.gz"
    if not path.is_file():
        raise AsrqError(f"{path}: cuts not found (run the mini recipe's data stages first)")
    return path


def _entry(res: Any) -> dict[str, Any]:
    s = res.summary(per_utterance=True)
    return {k: s[k] for k in ("wer", "lo", "hi", "num_utts", "num_words", "errors", "utterances")}


def _export_bytes(export_dir: Path) -> dict[str, int]:
    """Bytes of the deployable programs per backend (external ONNX weights included)."""
    out: dict[str, int] = {}
    for suffix, key in ((".onnx", "onnx"), (".pte", "executorch")):
        files = [p for p in export_dir.glob(f"*{suffix}*") if p.is_file()]
        if files:
            out[key] = sum(p.stat().st_size for p in files)
    return out


class Row:
    """Paths and stored results of one (base, variant) row."""

    def __init__(self, root: Path, base: Base, variant: Variant) -> None:
        self.base, self.variant = base, variant
        self.dir = root / base.name / variant.name
        self.qat_dir = self.dir / "qat"
        self.export_dir = self.dir / "export"
        self.scores = self.dir / "scores.json"
        self.bench = self.dir / "bench.json"

    @property
    def checkpoint(self) -> Path:
        return self.qat_dir / "model.pt" if self.variant.qat_dtype else self.base.checkpoint

    def exported(self) -> bool:
        return (self.export_dir / "metadata.json").is_file()


def run_qat(row: Row, base_cfg: ExperimentConfig, steps: int, lr: float, progress: bool) -> None:
    from asrq.quant.train import qat_train

    if not row.variant.qat_dtype or row.checkpoint.is_file():
        return
    cfg = qat_config(base_cfg, row.base.checkpoint, row.qat_dir, row.variant, steps, lr)
    if cfg.qat is not None:
        qat_train(cfg, progress=progress)
        return
    from asrq.quant.train import _init_weights
    from asrq.train.loop import Trainer

    trainer = Trainer(cfg, progress=progress)  # fp32-ft: start from the base's weights
    trainer.model.load_state_dict(_init_weights(row.base.checkpoint, cfg.model))
    trainer.run()


def run_export(row: Row) -> None:
    from asrq.export.pipeline import export_model

    if row.exported():
        return
    export_model(
        row.checkpoint,
        row.export_dir,
        name=f"{row.base.name}-{row.variant.name}",
        quant=row.variant.quant,
        programs=STREAMING_PROGRAMS,
        min_sqnr=TABLE_MIN_SQNR.get(row.variant.quant or ""),
    )


def run_score(row: Row, base_cfg: ExperimentConfig, eager: bool) -> dict[str, Any]:
    """WERs of the ONNX export (and, ``eager``, of the QAT checkpoint's fake-quant model)."""
    from asrq.decode.evaluate import evaluate
    from asrq.runtime.evaluate import evaluate_export

    out: dict[str, Any] = {"export": {}, "eager": {}}
    if row.scores.is_file():  # what is there stays (delete an entry to score it again)
        out = {**out, **json.loads(row.scores.read_text())}
    if not out["export"]:
        for name, attr in SPLITS:
            cuts = _cuts(base_cfg, attr)
            res = evaluate_export(row.export_dir, cuts, "onnx", streaming=True)
            out["export"][name] = _entry(res)
    qat = eager and row.variant.quant and row.variant.qat_dtype
    if qat and not out["eager"]:
        from asrq.quant.train import load_qat_model

        loaded = load_qat_model(row.checkpoint)
        for name, attr in SPLITS:
            res = evaluate(loaded, _cuts(base_cfg, attr), streaming=True, progress=False)
            out["eager"][name] = _entry(res)
    if qat and row.variant.quant == "int8" and "executorch" not in out:
        # parity in transcripts for the .pte too (int8: the programs that keep every quantizer)
        res = evaluate_export(
            row.export_dir, _cuts(base_cfg, "test_split"), "executorch", streaming=True
        )
        out["executorch"] = {"test_clean": _entry(res)}
    if qat and row.variant.quant == "int8" and "onnx_reference" not in out and _float_outputs(row):
        # ONNX int8 programs exported with float linear outputs (--onnx-float-outputs) are built
        # from the model without those quantizers (without_output_quant): score that reference
        from asrq.export.quant import without_output_quant
        from asrq.quant.train import load_qat_model

        loaded = load_qat_model(row.checkpoint)
        loaded.model = without_output_quant(loaded.model)
        res = evaluate(loaded, _cuts(base_cfg, "test_split"), streaming=True, progress=False)
        out["onnx_reference"] = {"test_clean": _entry(res)}
    atomic_write_json(row.scores, out)
    return out


def _float_outputs(row: Row) -> bool:
    """Whether the row's ONNX programs were exported with float linear outputs."""
    meta = json.loads((row.export_dir / "metadata.json").read_text())
    q = meta.get("quantization") or {}
    return isinstance(q.get("activations", {}).get("outputs_by_backend", {}).get("onnx"), str)


def run_row_bench(row: Row, base_cfg: ExperimentConfig, threads: int) -> dict[str, Any]:
    from asrq.bench.runner import run_bench

    if row.bench.is_file():
        return json.loads(row.bench.read_text())
    rep = run_bench(
        row.export_dir,
        backends=["onnx", "executorch"],
        threads=[threads],
        cuts=_cuts(base_cfg, "dev_split"),
        max_files=5,
        out=row.bench,
        plot=False,
    )
    return rep


def _paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    from asrq.decode.bootstrap import paired_by_id

    d = paired_by_id(a["utterances"], b["utterances"])
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}


def _record(row: Row, fp32: Row, ft: Row, qat_info: dict[str, Any] | None) -> dict[str, Any]:
    scores = json.loads(row.scores.read_text()) if row.scores.is_file() else None
    ref = json.loads(fp32.scores.read_text()) if fp32.scores.is_file() else None
    ref_ft = json.loads(ft.scores.read_text()) if ft.scores.is_file() else None
    rec: dict[str, Any] = {
        "base": row.base.name,
        "variant": row.variant.name,
        "quant": row.variant.quant,
        "qat": qat_info,
        "export_dir": str(row.export_dir),
    }
    if row.exported():
        rec["bytes"] = _export_bytes(row.export_dir)
        meta = json.loads((row.export_dir / "metadata.json").read_text())
        rec["quantization"] = meta.get("quantization")
        par = meta.get("parity") or {}
        rec["parity"] = {
            "min_sqnr_db": par.get("min_sqnr_db"),
            "sqnr_db": par.get("sqnr_db"),
            "encoder_inputs": par.get("encoder_inputs", "random"),
        }
    if scores:
        for split in scores["export"]:
            e = scores["export"][split]
            rec[f"wer_{split}"] = {k: v for k, v in e.items() if k != "utterances"}
            if ref and row.variant.name != "fp32":
                rec[f"diff_{split}"] = _paired(e, ref["export"][split])
            if ref_ft and row.variant.quant and row.variant.qat_dtype:  # QAT vs fp32-ft
                rec[f"diff_ft_{split}"] = _paired(e, ref_ft["export"][split])
            if split in scores.get("eager", {}):
                g = scores["eager"][split]
                rec[f"wer_{split}_eager"] = {k: v for k, v in g.items() if k != "utterances"}
                rec[f"export_minus_eager_{split}"] = round(e["wer"] - g["wer"], 3)
                rec[f"export_minus_eager_{split}_paired"] = _paired(e, g)
            if split in scores.get("executorch", {}) and split in scores.get("eager", {}):
                x = scores["executorch"][split]
                rec[f"wer_{split}_executorch"] = {k: v for k, v in x.items() if k != "utterances"}
                rec[f"executorch_minus_eager_{split}_paired"] = _paired(x, scores["eager"][split])
            if split in scores.get("onnx_reference", {}):  # int8: ONNX vs its own reference
                rec[f"export_minus_onnx_reference_{split}"] = _paired(
                    e, scores["onnx_reference"][split]
                )
    if row.bench.is_file():
        rep = json.loads(row.bench.read_text())
        rec["bench"] = {
            r["backend"]: {
                "threads": r["threads"],
                "chunk_p90_ms": r["chunk_latency_ms"]["p90"],
                "rtf": r["rtf"],
                "model_peak_bytes": r.get("model_peak_bytes"),
            }
            for r in rep["runs"]
        }
    return rec


def _ci(e: dict[str, Any] | None) -> str:
    return "" if not e else f"{e['wer']:.2f} [{e['lo']:.2f}, {e['hi']:.2f}]"


def _d(e: dict[str, Any] | None) -> str:
    return "" if not e else f"{e['diff']:+.2f} [{e['lo']:+.2f}, {e['hi']:+.2f}]"


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """The report: test-clean (streaming greedy, ONNX) with intervals, dev, sizes, speed."""
    fp32 = {r["base"]: r for r in records if r["variant"] == "fp32"}
    lines = [
        "| model | variant | test-clean WER % [95% CI] | - fp32, pp [paired 95% CI] "
        "| QAT - fp32-ft, pp [paired 95% CI] | dev WER % "
        "| ONNX - eager, test, pp [paired 95% CI] | .pte - eager, test "
        "| encoder SQNR dB ORT / ET (speech) | ONNX bytes (% fp32) "
        "| .pte bytes (% fp32) | ORT p90 ms / RTF | ET p90 ms / RTF |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        f = fp32.get(r["base"], {})

        def size(key: str, r: dict[str, Any] = r, f: dict[str, Any] = f) -> str:
            b = r.get("bytes", {}).get(key)
            fb = f.get("bytes", {}).get(key)
            if b is None:
                return ""
            return f"{b:,}" + (f" ({100 * b / fb:.1f}%)" if fb else "")

        def speed(key: str, r: dict[str, Any] = r) -> str:
            b = r.get("bench", {}).get(key)
            return "" if not b else f"{b['chunk_p90_ms']:.2f} / {b['rtf']:.4f}"

        dev = r.get("wer_dev")
        dev_s = "" if not dev else f"{dev['wer']:.2f}"
        pe = r.get("export_minus_eager_test_clean_paired") or r.get("export_minus_eager_test_clean")
        pr = r.get("export_minus_onnx_reference_test_clean")
        par = r.get("parity") or {}
        sq = par.get("sqnr_db") or {}
        enc = [(sq.get(b) or {}).get("encoder_streaming") for b in ("onnx", "executorch")]
        sqnr = " / ".join("" if v is None else f"{float(v):.1f}" for v in enc) if any(enc) else ""
        if sqnr and str(par.get("encoder_inputs", "random")) == "random":
            sqnr += " (noise)"  # parity on random frames (fp32 rows, older exports)
        lines.append(
            f"| {r['base']} | {r['variant']} | {_ci(r.get('wer_test_clean'))} "
            f"| {_d(r.get('diff_test_clean'))} | {_d(r.get('diff_ft_test_clean'))} | {dev_s} "
            f"| {_d(pe) if isinstance(pe, dict) else '' if pe is None else f'{pe:+.2f}'}"
            f"{'' if pr is None else f' (vs its float-outputs reference: {_d(pr)})'} "
            f"| {_d(r.get('executorch_minus_eager_test_clean_paired'))} "
            f"| {sqnr} "
            f"| {size('onnx')} | {size('executorch')} "
            f"| {speed('onnx')} | {speed('executorch')} |"
        )
    return "\n".join(lines) + "\n"


def plot_size_wer(records: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Size of the .pte programs vs test-clean WER, one marker per base model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in records if r.get("wer_test_clean") and r.get("bytes", {}).get("executorch")]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    markers = "osD^v<>"
    for i, base in enumerate(dict.fromkeys(r["base"] for r in pts)):
        rs = [r for r in pts if r["base"] == base]
        x = [r["bytes"]["executorch"] / 2**20 for r in rs]
        y = [r["wer_test_clean"]["wer"] for r in rs]
        err = [
            [r["wer_test_clean"]["wer"] - r["wer_test_clean"]["lo"] for r in rs],
            [r["wer_test_clean"]["hi"] - r["wer_test_clean"]["wer"] for r in rs],
        ]
        ax.errorbar(x, y, yerr=err, fmt=markers[i % len(markers)], label=base, capsize=2)
        for r, xi, yi in zip(rs, x, y, strict=True):
            ax.annotate(
                r["variant"], (xi, yi), fontsize=6, xytext=(3, 2), textcoords="offset points"
            )
    ax.set_xscale("log")
    ax.set_xlabel("ExecuTorch programs (MiB, log)")
    ax.set_ylabel("test-clean WER % (streaming greedy, ONNX; 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compression_table(
    bases: Sequence[Base],
    out_dir: str | Path,
    steps: int = 150,
    lr: float = 0.005,
    estimators: Sequence[str] = ESTIMATORS,
    stages: Sequence[str] = STAGES,
    threads: int = 1,
    only: Sequence[str] = (),
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the table (module doc) for ``bases``; returns what it writes to ``out_dir/quant.json``.
    ``only``: variant names to run (default all); ``stages``: a subset of :data:`STAGES`."""
    from asrq.utils.host import host_info

    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise AsrqError(f"unknown stage(s) {bad}; choose from {list(STAGES)}")
    every = variants(estimators)
    unknown = sorted(set(only) - {v.name for v in every})
    if unknown:
        raise AsrqError(f"unknown variant(s) {unknown}; the table has {[v.name for v in every]}")
    vs = [v for v in every if not only or v.name in only or v.name == "fp32"]
    out_dir = Path(out_dir)
    root = out_dir / "quant"
    records = []
    for base in bases:
        if not Path(base.checkpoint).is_file():
            raise AsrqError(f"{base.checkpoint}: checkpoint of base {base.name!r} not found")
        base_cfg = checkpoint_config(Path(base.checkpoint))
        fp32 = Row(root, base, vs[0])
        ft = Row(root, base, Variant("fp32-ft", None, "fp32"))
        for v in vs:
            row = Row(root, base, v)
            echo(f"=== {base.name} / {v.name}")
            if "qat" in stages:
                run_qat(row, base_cfg, steps, lr, progress)
            if "export" in stages:
                run_export(row)
            if "score" in stages and row.exported():
                s = run_score(row, base_cfg, eager=True)
                t = s["export"]["test_clean"]
                echo(f"    test-clean {t['wer']:.2f} [{t['lo']:.2f}, {t['hi']:.2f}]")
            if "bench" in stages and row.exported():
                run_row_bench(row, base_cfg, threads)
            qat_info = None
            if v.qat_dtype:
                summ = row.qat_dir / "train_summary.json"
                qat_info = {
                    "dtype": v.qat_dtype,
                    "estimator": v.estimator,
                    "steps": steps,
                    "lr": lr,
                    "train": json.loads(summ.read_text()) if summ.is_file() else None,
                }
            records.append(_record(row, fp32, ft, qat_info))
        result = {
            "schema": "asrq.quant_table/1",
            "wer": "streaming greedy through onnxruntime (ONNX export), dev and test-clean",
            "speed": f"asrq bench, {threads} thread(s), isolated processes, 5 dev utterances",
            "selection": "QAT learning rate chosen on dev (choose_lr); test reported once",
            "host": host_info(),
            "rows": records,
        }
        atomic_write_json(out_dir / "quant.json", result)  # partial results survive a stop
    atomic_write_text(out_dir / "quant.md", markdown_table(records))
    png = plot_size_wer(records, out_dir / "quant_size_wer.png")
    result["plot"] = str(png) if png else None
    atomic_write_json(out_dir / "quant.json", result)
    echo(markdown_table(records))
    return result


def choose_lr(
    base: Base,
    out_dir: str | Path,
    lrs: Sequence[float],
    steps: int,
    variant: Variant = Variant("qat-int4-ste", "w4a8", "int4", "ste"),
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune ``variant`` of ``base`` at each of ``lrs`` and pick the lowest *dev* WER of the
    eager QAT model (streaming greedy); writes ``out_dir/quant_lr.json``."""
    from asrq.decode.evaluate import evaluate
    from asrq.quant.train import load_qat_model, qat_train

    base_cfg = checkpoint_config(Path(base.checkpoint))
    dev = _cuts(base_cfg, "dev_split")
    trials = []
    for lr in lrs:
        exp = Path(out_dir) / "quant_lr" / f"{base.name}-{variant.name}-lr{lr:g}"
        if not (exp / "model.pt").is_file():
            cfg = qat_config(base_cfg, Path(base.checkpoint), exp, variant, steps, lr)
            qat_train(cfg, progress=progress)
        res = evaluate(load_qat_model(exp / "model.pt"), dev, streaming=True, progress=False)
        s = res.summary()
        trials.append({"lr": lr, "wer_dev": s["wer"], "lo": s["lo"], "hi": s["hi"]})
        echo(f"--- lr {lr:g}: dev {s['wer']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}]")
    best = min(trials, key=lambda t: t["wer_dev"])
    out = {
        "base": base.name,
        "variant": variant.name,
        "steps": steps,
        "trials": trials,
        "lr": best["lr"],
    }
    atomic_write_json(Path(out_dir) / "quant_lr.json", out)
    return out
