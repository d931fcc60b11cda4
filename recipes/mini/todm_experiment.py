#!/usr/bin/env python3
"""Train once, deploy many, measured on the mini corpus: one supernet training vs K individually
trained models of the sizes the supernet exports (same per-model step budget, same data).
Writes exp/mini/todm.json and exp/mini/todm.md. Needs the mini corpus (`make demo`, or its
synth/prepare/bpe stages). A benchmark, not a test; logic in asrq.experiments.todm."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from asrq.config import load_config
from asrq.experiments.todm import DEFAULT_HELD_OUT, DEFAULT_SIZES, deploy_many
from asrq.utils.io import AsrqError

HERE = Path(__file__).resolve().parent


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "-c",
    default=str(HERE / "supernet.yaml"),
    show_default=True,
    help="Supernet recipe YAML.",
)
@click.option(
    "--set",
    "-s",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override (repeatable), e.g. -s supernet.num_random=2.",
)
@click.option(
    "--steps",
    default=600,
    show_default=True,
    help="Training steps of the supernet and of each individual model.",
)
@click.option(
    "--only",
    multiple=True,
    type=click.Choice([s.name for s in DEFAULT_SIZES]),
    help="Compare only these sizes (at least 3).",
)
@click.option(
    "--held-out",
    "held_out",
    multiple=True,
    type=click.Choice([s.name for s in DEFAULT_HELD_OUT]),
    help="Out-of-pool sizes (never drawn as random subnets) to compare too, each against its "
    f"own twin [default: all of {', '.join(s.name for s in DEFAULT_HELD_OUT)}].",
)
@click.option("--no-held-out", is_flag=True, help="Compare no out-of-pool size.")
@click.option(
    "--pool/--no-pool",
    default=True,
    show_default=True,
    help="Draw the random subnets of each step from the compared middle sizes (unless the config "
    "sets supernet.sample_pool): stated per size in todm.json (`sampled`); --no-pool: from the "
    "whole search space.",
)
@click.option(
    "--out", default="exp/mini", show_default=True, help="Where todm.json / todm.md and todm/ go."
)
def main(
    config: str,
    overrides: tuple[str, ...],
    steps: int,
    only: tuple[str, ...],
    held_out: tuple[str, ...],
    no_held_out: bool,
    pool: bool,
    out: str,
) -> None:
    """One supernet vs K individually trained models of the same sizes, plus out-of-pool sizes
    against their own twins; every WER with its 95% bootstrap interval and every slice -
    individual difference with its paired-bootstrap interval (dev to choose on, test to
    report)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = load_config(config, overrides)
        sizes = [s for s in DEFAULT_SIZES if not only or s.name in only]
        extra = [
            s for s in DEFAULT_HELD_OUT if not no_held_out and (not held_out or s.name in held_out)
        ]
        deploy_many(cfg, out, sizes, steps=steps, pool_middle=pool, held_out=extra)
    except AsrqError as e:
        raise click.ClickException(str(e)) from e


if __name__ == "__main__":
    main()
