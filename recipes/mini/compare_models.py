#!/usr/bin/env python3
"""Model breadth on the mini corpus, same step budget for each: Conformer RNN-T, Stateformer
RNN-T, Conformer CTC/attention, and the two RNN-Ts with folding attention (fold 2). Trains,
decodes (full context + streaming), exports (ONNX + .pte) and benchmarks each, then writes
exp/mini/models.json and exp/mini/models.md. Needs the mini corpus (`make demo`, or its
synth/prepare/bpe stages). A benchmark, not a test; logic in asrq.experiments.compare."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from asrq.config import load_config
from asrq.experiments.compare import DEFAULT_VARIANTS, compare_models
from asrq.utils.io import AsrqError

HERE = Path(__file__).resolve().parent
REAL_AUDIO = HERE.parents[1].parent / "shared" / "data" / "real"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config", "-c", default=str(HERE / "config.yaml"), show_default=True, help="Base recipe YAML."
)
@click.option(
    "--set",
    "-s",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override for every variant (repeatable).",
)
@click.option(
    "--steps", default=600, show_default=True, help="Training steps per model (the shared budget)."
)
@click.option(
    "--only",
    multiple=True,
    type=click.Choice([v.name for v in DEFAULT_VARIANTS]),
    help="Run only these variants.",
)
@click.option(
    "--out",
    default="exp/mini",
    show_default=True,
    help="Where models.json / models.md and models/<name>/ go.",
)
@click.option(
    "--real-audio",
    default=str(REAL_AUDIO),
    show_default=True,
    help="Folder of audio each exported model transcribes (skipped when missing).",
)
def main(
    config: str,
    overrides: tuple[str, ...],
    steps: int,
    only: tuple[str, ...],
    out: str,
    real_audio: str,
) -> None:
    """Train and compare the five model variants with the same step budget."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = load_config(config, overrides)
        variants = [v for v in DEFAULT_VARIANTS if not only or v.name in only]
        compare_models(cfg, out, variants, steps=steps, real_audio_dir=real_audio)
    except AsrqError as e:
        raise click.ClickException(str(e)) from e


if __name__ == "__main__":
    main()
