#!/usr/bin/env python3
"""The LibriSpeech recipe: prepare the corpus the user already has on disk (nothing is
downloaded), train BPE and a streaming Conformer RNN-T, decode test-clean full-context and
streaming, export ONNX and ExecuTorch, benchmark; writes <exp_dir>/summary.json. All logic lives in
asrq.pipeline; this script only parses arguments."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from asrq.config import load_config
from asrq.pipeline import STAGES, run_pipeline
from asrq.utils.io import AsrqError

HERE = Path(__file__).resolve().parent
DEFAULT_STAGES = ",".join(s for s in STAGES if s not in ("synth", "transcribe"))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--corpus-dir",
    required=True,
    type=click.Path(),
    help="The LibriSpeech/ folder (holding train-clean-100/, dev-clean/, ...).",
)
@click.option(
    "--config", "-c", default=str(HERE / "config.yaml"), show_default=True, help="Recipe YAML."
)
@click.option(
    "--set",
    "-s",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Dotted config override (repeatable).",
)
@click.option(
    "--stages", default=DEFAULT_STAGES, show_default=True, help="Comma-separated stages to run."
)
@click.option(
    "--num-jobs", default=2, show_default=True, help="Parallel jobs for feature extraction."
)
def main(
    corpus_dir: str, config: str, overrides: tuple[str, ...], stages: str, num_jobs: int
) -> None:
    """Run the LibriSpeech recipe on a local copy of the corpus."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = load_config(config, [f"data.corpus_dir={corpus_dir}", *overrides])
        summary = run_pipeline(
            cfg,
            [s.strip() for s in stages.split(",") if s.strip()],
            synthesize=False,
            num_jobs=num_jobs,
        )
    except AsrqError as e:
        raise click.ClickException(str(e)) from e
    keys = ("wer_test", "wer_test_streaming", "params", "onnx_bytes", "pte_bytes", "train_minutes")
    click.echo("summary: " + ", ".join(f"{k}={summary.get(k)}" for k in keys))


if __name__ == "__main__":
    main()
