#!/usr/bin/env python3
"""Export parity of the compression table's QAT int8 rows over all of test-clean: each exported
streaming encoder (onnxruntime, ExecuTorch) against its fake-quant eager model, every window of
every utterance. Writes exp/mini/quant_parity.json and .md; logic in
asrq.experiments.quant_parity. Needs the table's exported rows (recipes/mini/quant_table.py)."""

from __future__ import annotations

import click

from asrq.experiments.quant import base_option, parse_bases, split_list
from asrq.experiments.quant_parity import BACKENDS, parity_table
from asrq.utils.io import AsrqError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@base_option()
@click.option(
    "--only", multiple=True, help="QAT int8 variants, repeated or comma-separated (default all)."
)
@click.option(
    "--backend",
    "backends",
    multiple=True,
    help=f"Runtimes, repeated or comma-separated [default: {','.join(BACKENDS)}].",
)
@click.option("--out", default="exp/mini", show_default=True, help="The table's directory.")
def main(
    bases: tuple[str, ...], only: tuple[str, ...], backends: tuple[str, ...], out: str
) -> None:
    """Whole-test-set encoder parity of the QAT int8 rows of the compression table."""
    try:
        parity_table(
            parse_bases(bases),
            out,
            only=split_list(only),
            backends=split_list(backends) or BACKENDS,
            log=click.echo,
        )
    except AsrqError as e:
        raise click.ClickException(str(e)) from e


if __name__ == "__main__":
    main()
