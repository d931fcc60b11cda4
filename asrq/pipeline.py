"""Recipe pipeline: data -> train -> decode -> export -> bench -> summary, as named stages.

``recipes/mini/run.py`` (the README's first command) and ``recipes/librispeech/run.py`` are thin
wrappers around :func:`run_pipeline`. Every stage skips finished work where it can (the data
stages keep markers; training resumes from the last checkpoint), so re-running a recipe after
an interruption continues it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from asrq.config import ExperimentConfig
from asrq.utils.io import AsrqError, atomic_write_json

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = (
    "synth",
    "prepare",
    "bpe",
    "train",
    "decode",
    "export",
    "bench",
    "transcribe",
)


def _cuts(cfg: ExperimentConfig, split: str) -> Path:
    return Path(cfg.data.fbank_dir) / f"librispeech_cuts_{split}.jsonl.gz"


def plot_wer_curve(curve: list[dict[str, float]], path: Path, title: str) -> Path | None:
    """WER over training minutes as a PNG (matplotlib, Agg)."""
    if not curve:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asrq.utils.io import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["train_minutes"] for p in curve], [p["wer_dev"] for p in curve], marker="o")
    ax.set_xlabel("training minutes")
    ax.set_ylabel("dev WER (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def run_pipeline(
    cfg: ExperimentConfig,
    stages: Sequence[str] = STAGES,
    synthesize: bool = True,
    summary_path: str | Path | None = None,
    real_audio_dir: str | Path | None = None,
    num_jobs: int = 2,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the selected ``stages`` in order for the experiment ``cfg``; returns the summary.

    ``synthesize=False`` skips the corpus synthesis (the LibriSpeech recipe: ``cfg.data.corpus_dir``
    is the user's corpus). ``real_audio_dir``: audio files to transcribe with the exported model
    in the ``transcribe`` stage (e.g. ``../shared/data/real``).
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise AsrqError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    exp_dir = Path(cfg.train.exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    summary_path = Path(summary_path) if summary_path else exp_dir / "summary.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    timings: dict[str, float] = summary.setdefault("stage_seconds", {})
    model_path = exp_dir / "model.pt"
    export_dir = exp_dir / "export"

    def save() -> None:
        atomic_write_json(summary_path, summary)

    for stage in [s for s in STAGES if s in stages]:
        t0 = time.perf_counter()
        echo(f"==> stage {stage}")
        if stage == "synth":
            if not synthesize:
                continue
            from asrq.data.synth import read_synth_info, synthesize_corpus

            corpus = synthesize_corpus(
                Path(cfg.data.corpus_dir).parent, cfg.data.synth, num_jobs=num_jobs
            )
            summary["corpus"] = read_synth_info(corpus).get("summary", {})
        elif stage == "prepare":
            from asrq.data.prepare import prepare_librispeech

            prepare_librispeech(
                cfg.data.corpus_dir,
                cfg.data.manifest_dir,
                cfg.data.fbank_dir,
                cfg.data.speed_perturb,
                num_jobs=num_jobs,
            )
        elif stage == "bpe":
            from asrq.data.bpe import read_transcripts, train_bpe

            texts: list[str] = []
            for split in cfg.data.train_splits:
                texts += read_transcripts(_cuts(cfg, split))
            train_bpe(texts, cfg.data.lang_dir, cfg.data.vocab_size)
        elif stage == "train":
            from asrq.train.loop import latest_checkpoint, train

            if model_path.is_file() and _finished(model_path, cfg):
                echo(f"{model_path} exists for this config; skipping training")
                res = _train_summary(exp_dir)
            else:
                resume = latest_checkpoint(exp_dir) is not None
                if cfg.train.num_procs > 1:
                    res = _train_ddp(cfg, resume)
                else:
                    res = train(cfg, resume=resume)
            summary.update(
                params=res["params"],
                train_minutes=res["train_minutes"],
                train_steps=res["steps"],
                wer_curve=res["wer_curve"],
            )
            png = plot_wer_curve(
                res["wer_curve"],
                exp_dir / "wer_curve.png",
                f"{exp_dir.name}: dev WER vs training time",
            )
            summary["wer_curve_png"] = str(png) if png else None
        elif stage == "decode":
            summary.update(decode_splits(cfg, model_path, exp_dir, echo))
        elif stage == "export":
            from asrq.export.pipeline import export_model

            res = export_model(model_path, export_dir, log_fn=echo)
            summary.update(_export_sizes(export_dir))
        elif stage == "bench":
            from asrq.bench.runner import run_bench

            report = run_bench(
                export_dir,
                threads=cfg.bench.threads,
                chunk_ms=cfg.bench.chunk_ms,
                cuts=_cuts(cfg, cfg.data.test_split),
                max_files=cfg.bench.max_files,
                log_fn=echo,
            )
            for run in report["runs"]:
                key = f"rtf_{run['backend']}_{run['threads']}thread"
                summary[key] = round(run["rtf"], 5)
                summary[f"chunk_latency_p90_ms_{run['backend']}_{run['threads']}thread"] = round(
                    run["chunk_latency_ms"]["p90"], 3
                )
            summary["bench_json"] = report["json"]
        elif stage == "transcribe":
            if real_audio_dir is None or not Path(real_audio_dir).is_dir():
                echo("no real audio folder; skipping")
                continue
            from asrq.runtime.transcribe import transcribe

            files = sorted(
                p
                for p in Path(real_audio_dir).rglob("*")
                if p.suffix.lower() in (".wav", ".flac", ".mp3", ".ogg")
            )
            lines = transcribe(export_dir, files, backend="onnx")
            summary["transcripts_real"] = {str(p): text for p, text in lines}
            for p, text in lines:
                echo(f"{p}\t{text}")
            real = score_real(lines, real_audio_dir, exp_dir)
            summary["wer_real"] = real
            if real is None:
                echo(f"no *.trans.txt transcripts under {real_audio_dir}: no real-speech WER")
            else:
                echo(f"real recordings: {_fmt(real)} on {real['num_utts']} transcribed files")
        timings[stage] = round(time.perf_counter() - t0, 1)
        save()
    summary["total_stage_minutes"] = round(sum(timings.values()) / 60, 2)
    save()
    return summary


#: summary key -> (split attribute of ``cfg.data``, streaming) of what the decode stage scores.
#: ``wer_dev`` is there for choosing (settings, checkpoints, variants); the test splits only
#: report. A split whose cuts do not exist is skipped (test-other of an older corpus).
DECODE_RUNS: tuple[tuple[str, str, bool], ...] = (
    ("wer_dev", "dev_split", False),
    ("wer_test_clean", "test_split", False),
    ("wer_test_clean_streaming", "test_split", True),
    ("wer_test_other", "test_other_split", False),
)


def _fmt(r: dict[str, Any]) -> str:
    return f"WER {r['wer']:.2f}% [95% CI {r['lo']:.2f}, {r['hi']:.2f}]"


def decode_splits(
    cfg: ExperimentConfig, model_path: Path, exp_dir: Path, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """The decode stage: every :data:`DECODE_RUNS` entry with ``cfg.decode.method``. Writes
    ``wer-<split>-<method>[-streaming].json`` (totals, 95% bootstrap interval, per-utterance
    ``[cut_id, errors, words]`` for paired comparisons) and ``errs-*.txt`` in ``exp_dir``;
    returns the summary entries ``{key: {"wer", "lo", "hi", "num_utts", "num_words", "errors",
    "split", "streaming", "json"}}`` plus the older flat ``wer_test`` / ``wer_test_streaming``
    (test-clean WER, percent, 2 decimals)."""
    from asrq.decode.evaluate import evaluate
    from asrq.decode.wer import write_errors
    from asrq.train.checkpoint import load_model

    loaded = load_model(model_path)
    out: dict[str, Any] = {}
    for key, attr, streaming in DECODE_RUNS:
        split = getattr(cfg.data, attr)
        cuts = _cuts(cfg, split) if split else None
        if cuts is None or (key != "wer_test_clean" and not cuts.is_file()):
            echo(f"{key}: no cuts for split {split!r}; skipped")
            continue
        res = evaluate(
            loaded,
            cuts,
            method=cfg.decode.method,
            streaming=streaming,
            beam=cfg.decode.beam,
            ctc_weight=cfg.decode.ctc_weight,
        )
        tag = f"{split}-{cfg.decode.method}" + ("-streaming" if streaming else "")
        write_errors(exp_dir / f"errs-{tag}.txt", res.results, title=tag)
        atomic_write_json(exp_dir / f"wer-{tag}.json", res.summary(per_utterance=True))
        out[key] = _entry(res.interval(), split=split, streaming=streaming)
        out[key]["json"] = str(exp_dir / f"wer-{tag}.json")
        echo(f"{tag}: {_fmt(out[key])} ({res.errors}/{res.num_words})")
    out["wer_test"] = round(out["wer_test_clean"]["wer"], 2)
    out["wer_test_streaming"] = round(out["wer_test_clean_streaming"]["wer"], 2)
    return out


def _entry(ci: dict[str, Any], **extra: Any) -> dict[str, Any]:
    keep = ("num_utts", "num_words", "errors", "level", "n_boot")
    return {
        **{k: round(ci[k], 2) for k in ("wer", "lo", "hi")},
        **{k: ci[k] for k in keep},
        **extra,
    }


def read_transcripts(folder: str | Path) -> dict[str, str]:
    """Utterance id -> reference text from every LibriSpeech-style ``*.trans.txt`` under
    ``folder`` (``<utt-id> <TEXT>`` per line)."""
    refs: dict[str, str] = {}
    for path in sorted(Path(folder).rglob("*.trans.txt")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            if not text:
                raise AsrqError(f"{path}:{n}: expected '<utterance-id> <TEXT>', got {line!r}")
            refs[utt] = text
    return refs


def score_real(
    lines: Sequence[tuple[str, str]], folder: str | Path, exp_dir: Path
) -> dict[str, Any] | None:
    """WER with its 95% bootstrap interval of the transcribed files ``lines`` (``(path,
    text)``) that have a reference in a ``*.trans.txt`` under ``folder`` (matched by file stem);
    writes ``wer-real.json`` / ``errs-real.txt`` in ``exp_dir``. None when no file has one.
    Reported, never tuned on."""
    from asrq.decode.bootstrap import wer_ci
    from asrq.decode.wer import score_utterance, write_errors

    refs = read_transcripts(folder)
    scored = [
        score_utterance(Path(p).stem, refs[Path(p).stem].upper(), text.upper())
        for p, text in lines
        if Path(p).stem in refs
    ]
    if not scored:
        return None
    write_errors(exp_dir / "errs-real.txt", scored, title=f"real recordings in {folder}")
    ci = wer_ci(scored)
    atomic_write_json(
        exp_dir / "wer-real.json",
        {**ci, "utterances": [[r.cut_id, r.errors, r.num_words] for r in scored]},
    )
    return {**_entry(ci, folder=str(folder)), "json": str(exp_dir / "wer-real.json")}


def _finished(model_path: Path, cfg: ExperimentConfig) -> bool:
    from asrq.config import to_dict, upgrade_model_dict
    from asrq.train.checkpoint import load_checkpoint

    stored = load_checkpoint(model_path)["config"]
    want = to_dict(cfg)
    # vocab_size is filled in at training time; compare everything else
    stored_model = {**upgrade_model_dict(stored["model"]), "vocab_size": 0}
    return stored_model == {**want["model"], "vocab_size": 0} and stored["train"] == want["train"]


def _train_ddp(cfg: ExperimentConfig, resume: bool) -> dict[str, Any]:
    """The train stage as ``torchrun --nproc-per-node cfg.train.num_procs`` on this host (DDP,
    gloo); the resolved config goes to the workers as a YAML file beside the checkpoints."""
    import os
    import subprocess
    import sys

    from asrq.config import dump_yaml
    from asrq.utils.io import atomic_write_text

    exp_dir = Path(cfg.train.exp_dir)
    cfg_path = exp_dir / "train_config.yaml"
    atomic_write_text(cfg_path, dump_yaml(cfg))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={cfg.train.num_procs}",
        "-m",
        "asrq.cli.main",
        "train",
        "--config",
        str(cfg_path),
    ]
    if resume:
        cmd.append("--resume")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // cfg.train.num_procs)),
    }
    log.info("training with %d processes: %s", cfg.train.num_procs, " ".join(cmd))
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise AsrqError(
            f"training failed (torchrun exit code {proc.returncode}); see "
            f"{exp_dir / 'train_log.jsonl'}"
        )
    return _train_summary(exp_dir)


def _train_summary(exp_dir: Path) -> dict[str, Any]:
    p = exp_dir / "train_summary.json"
    if not p.is_file():
        raise AsrqError(f"{p}: missing; delete {exp_dir / 'model.pt'} to retrain")
    return json.loads(p.read_text())


def _export_sizes(export_dir: Path) -> dict[str, int]:
    onnx = sum(p.stat().st_size for p in export_dir.glob("*.onnx")) + sum(
        p.stat().st_size for p in export_dir.glob("*.onnx.data")
    )
    pte = sum(p.stat().st_size for p in export_dir.glob("*.pte"))
    return {"onnx_bytes": onnx, "pte_bytes": pte}
