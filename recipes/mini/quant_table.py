#!/usr/bin/env python3
"""The compression table on the mini corpus: fp32, PTQ and QAT (ste / noise / squat) at int8 and
int4 for the demo model and the largest and smallest subnet of the deploy-many supernet; every
row an exported model directory scored and benchmarked through its runtime. Writes
exp/mini/quant.json, quant.md and quant_size_wer.png. A benchmark, not a test; logic in
asrq.experiments.quant. Needs `make demo` (exp/mini/model.pt) and the deploy-many experiment's
slices (recipes/mini/todm_experiment.py: exp/mini/todm/slices/)."""

from __future__ import annotations

import logging

import click

from asrq.experiments.quant import (
    ESTIMATORS,
    STAGES,
    base_option,
    choose_lr,
    compression_table,
    parse_bases,
    split_list,
)
from asrq.utils.io import AsrqError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@base_option()
@click.option("--steps", default=150, show_default=True, help="QAT fine-tuning steps per row.")
@click.option(
    "--lr",
    type=float,
    default=None,
    help="QAT learning rate; without it the rate is chosen on dev among --lr-choices.",
)
@click.option(
    "--lr-choices",
    default="0.002,0.008",
    show_default=True,
    help="Rates tried (qat-int4-ste on the first base, dev WER of the eager QAT model).",
)
@click.option(
    "--estimators",
    default=",".join(ESTIMATORS),
    show_default=True,
    help="QAT gradient estimators.",
)
@click.option(
    "--stages",
    default=",".join(STAGES),
    show_default=True,
    help="qat,export,score,bench (bench: run it on a quiet machine).",
)
@click.option(
    "--only",
    multiple=True,
    help="Run only these variants, repeated or comma-separated, e.g. qat-int8-ste,ptq-int8 "
    "(fp32 always runs).",
)
@click.option("--threads", default=1, show_default=True, help="Benchmark threads.")
@click.option(
    "--out", default="exp/mini", show_default=True, help="Where quant.json and quant/ go."
)
def main(
    bases: tuple[str, ...],
    steps: int,
    lr: float | None,
    lr_choices: str,
    estimators: str,
    stages: str,
    only: tuple[str, ...],
    threads: int,
    out: str,
) -> None:
    """fp32 / PTQ / QAT x {int8, int4} x estimators for each base model: test-clean WER with
    its interval and the paired interval against fp32, dev WER, export - eager WER, program
    bytes, chunk p90 and RTF in onnxruntime and ExecuTorch."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        parsed = parse_bases(bases)
        if lr is None:
            choices = [float(x) for x in lr_choices.split(",") if x.strip()]
            lr = float(choose_lr(parsed[0], out, choices, steps)["lr"])
            click.echo(f"QAT learning rate chosen on dev: {lr:g}")
        compression_table(
            parsed,
            out,
            steps=steps,
            lr=lr,
            estimators=[e.strip() for e in estimators.split(",") if e.strip()],
            stages=[s.strip() for s in stages.split(",") if s.strip()],
            threads=threads,
            only=split_list(only),
        )
    except AsrqError as e:
        raise click.ClickException(str(e)) from e


if __name__ == "__main__":
    main()
