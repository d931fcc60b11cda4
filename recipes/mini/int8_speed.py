#!/usr/bin/env python3
"""int8 vs fp32 streaming speed at three model widths, onnxruntime and ExecuTorch, 1 and 2
threads, with an onnxruntime profile of where an int8 chunk's time goes. Writes
exp/mini/int8_speed.json and int8_speed.md. A benchmark, not a test (run it on a quiet machine);
logic in asrq.experiments.int8_speed. Needs `make demo` (its checkpoint is the template)."""

from __future__ import annotations

import logging

import click

from asrq.experiments.int8_speed import WIDTHS, int8_speed
from asrq.utils.io import AsrqError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--template",
    default="exp/mini/model.pt",
    show_default=True,
    help="fp32 checkpoint whose config (depth, heads, data) the random-init widths copy.",
)
@click.option(
    "--widths",
    default=",".join(str(w) for w in WIDTHS),
    show_default=True,
    help="Encoder widths (d_model; FFN 4x).",
)
@click.option("--threads", default="1,2", show_default=True, help="Thread counts to bench.")
@click.option("--max-files", default=5, show_default=True, help="Dev utterances streamed.")
@click.option("--out", default="exp/mini", show_default=True, help="Where the JSON / md go.")
@click.option(
    "--export-only", is_flag=True, help="Only the exports (the benchmark needs a quiet machine)."
)
def main(
    template: str, widths: str, threads: str, max_files: int, out: str, export_only: bool
) -> None:
    """fp32, PTQ static int8 and QAT int8 (the graph a QAT checkpoint exports) programs of
    random-init models at each width, benchmarked side by side (chunk and encoder latency), and
    their onnxruntime kernel time per op type."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        int8_speed(
            template,
            out,
            widths=[int(w) for w in widths.split(",") if w.strip()],
            threads=[int(t) for t in threads.split(",") if t.strip()],
            max_files=max_files,
            bench=not export_only,
        )
    except AsrqError as e:
        raise click.ClickException(str(e)) from e


if __name__ == "__main__":
    main()
