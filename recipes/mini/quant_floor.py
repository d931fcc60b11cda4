#!/usr/bin/env python3
"""The noise floor of the compression table's QAT int8 models: how far each fake-quant model's
encoder output (SQNR) and test-clean transcripts (paired WER) move under a 1e-6 relative
perturbation of its fbank input, beside its exported programs' parity. Read the exports'
parity against it: two correct int8 implementations differ by perturbations of that size.
Writes exp/mini/quant_floor.json and .md; logic in asrq.experiments.quant_floor. Needs the
table's QAT rows (recipes/mini/quant_table.py)."""

from __future__ import annotations

import click

from asrq.experiments.quant import base_option, parse_bases, split_list
from asrq.experiments.quant_floor import floor_table
from asrq.utils.io import AsrqError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@base_option()
@click.option("--rel", default=1e-6, show_default=True, help="Relative input perturbation.")
@click.option("--seeds", default="0,1", show_default=True, help="Perturbation seeds.")
@click.option(
    "--only", multiple=True, help="QAT int8 variants, repeated or comma-separated (default all)."
)
@click.option("--out", default="exp/mini", show_default=True, help="The table's directory.")
def main(bases: tuple[str, ...], rel: float, seeds: str, only: tuple[str, ...], out: str) -> None:
    """Noise floor of the QAT int8 rows of the compression table."""
    try:
        parsed = parse_bases(bases)
        floor_table(
            parsed,
            out,
            rel=rel,
            seeds=[int(s) for s in seeds.split(",") if s.strip()],
            only=split_list(only),
            log=click.echo,
        )
    except AsrqError as e:
        raise click.ClickException(str(e)) from e


if __name__ == "__main__":
    main()
