#!/usr/bin/env python3
"""The ONNX int8 export with every quantizer of the trained model (the default) against
`--onnx-float-outputs` (the linear layers write float) on the compression table's QAT int8 rows:
test-clean WER of each against the fake-quant eager model (paired intervals) and onnxruntime
chunk latency side by side (1 thread; run it on a quiet machine). Writes
exp/mini/quant_onnx_outputs.json and .md; logic in asrq.experiments.onnx_outputs. Needs the
table's exported and scored rows (recipes/mini/quant_table.py)."""

from __future__ import annotations

import click

from asrq.experiments.onnx_outputs import onnx_outputs_table
from asrq.experiments.quant import base_option, parse_bases
from asrq.utils.io import AsrqError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@base_option()
@click.option("--rounds", default=2, show_default=True, help="Benchmark passes over each pair.")
@click.option("--no-bench", is_flag=True, help="Export and score only.")
@click.option("--out", default="exp/mini", show_default=True, help="The table's directory.")
def main(bases: tuple[str, ...], rounds: int, no_bench: bool, out: str) -> None:
    """Every quantizer vs float linear outputs in the ONNX int8 programs."""
    try:
        parsed = parse_bases(bases)
        onnx_outputs_table(parsed, out, rounds=rounds, bench=not no_bench, log=click.echo)
    except AsrqError as e:
        raise click.ClickException(str(e)) from e


if __name__ == "__main__":
    main()
