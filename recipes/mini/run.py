#!/usr/bin/env python3
"""The mini recipe (the README's first command): synthesize a small espeak-ng + flite + festival
corpus in the LibriSpeech layout, prepare fbank + BPE, train a streaming Conformer RNN-T,
decode dev, test-clean (full context and streaming) and test-other, export ONNX and ExecuTorch,
benchmark, score the real recordings, and write exp/mini/summary.json (every WER with its 95%
bootstrap interval). All logic lives in asrq.pipeline; this script only parses arguments."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from asrq.config import load_config
from asrq.pipeline import STAGES, run_pipeline
from asrq.utils.io import AsrqError

HERE = Path(__file__).resolve().parent
REAL_AUDIO = HERE.parents[1].parent / "shared" / "data" / "real"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
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
    "--stages", default=",".join(STAGES), show_default=True, help="Comma-separated stages to run."
)
@click.option(
    "--real-audio",
    default=str(REAL_AUDIO),
    show_default=True,
    help="Folder of audio to transcribe at the end.",
)
def main(config: str, overrides: tuple[str, ...], stages: str, real_audio: str) -> None:
    """Run the mini recipe end to end (about 20 minutes on 2 quiet CPU cores)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = load_config(config, overrides)
        summary = run_pipeline(
            cfg, [s.strip() for s in stages.split(",") if s.strip()], real_audio_dir=real_audio
        )
    except AsrqError as e:
        raise click.ClickException(str(e)) from e
    for key in (
        "wer_dev",
        "wer_test_clean",
        "wer_test_clean_streaming",
        "wer_test_other",
        "wer_real",
    ):
        e = summary.get(key)
        if isinstance(e, dict):
            click.echo(f"{key}: {e['wer']:.2f}% [95% CI {e['lo']:.2f}, {e['hi']:.2f}]")
    keys = (
        "params",
        "onnx_bytes",
        "pte_bytes",
        "rtf_onnx_1thread",
        "rtf_executorch_1thread",
        "train_minutes",
    )
    click.echo("summary: " + ", ".join(f"{k}={summary.get(k)}" for k in keys))


if __name__ == "__main__":
    main()
