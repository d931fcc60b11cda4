"""``asrq train``: train an RNN-T model from a recipe config."""

from __future__ import annotations

import logging

import click

from asrq.config import load_config
from asrq.utils.io import AsrqError


@click.command()
@click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Recipe YAML (e.g. recipes/mini/config.yaml). Defaults: asrq.config.ExperimentConfig.",
)
@click.option(
    "--set",
    "-s",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Dotted override, repeatable: -s train.max_minutes=5 -s model.encoder.num_layers=6",
)
@click.option(
    "--resume",
    is_flag=False,
    flag_value="latest",
    default=None,
    metavar="[CKPT]",
    help="Continue from a checkpoint: the latest in <exp_dir>/checkpoints, or the given file.",
)
@click.option(
    "--no-progress", is_flag=True, help="Disable the progress bar (JSON log lines still print)."
)
def train(
    config_path: str | None, overrides: tuple[str, ...], resume: str | None, no_progress: bool
) -> None:
    """Train a streaming Conformer RNN-T (pruned RNN-T + CTC, ScaledAdam, Eden).

    Reads fbank CutSets from data.fbank_dir and the BPE model from data.lang_dir; writes
    <train.exp_dir>/checkpoints/ckpt-<step>.pt (resumable), model.pt (final, with its resolved
    config and BPE model), train_log.jsonl (a JSON line every train.log_every steps) and
    train_summary.json. Multi-process: `torchrun --nproc-per-node 2 -m asrq.cli.main train ...`
    (gloo on CPU).
    """
    from asrq.train.loop import train as run_train

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = load_config(config_path, overrides)
    if cfg.supernet is not None:
        raise AsrqError(
            f"{config_path}: this config has a supernet: section; "
            "train it with `asrq supernet train`"
        )
    res: str | bool = False
    if resume == "latest":
        res = True
    elif resume:
        res = resume
    summary = run_train(cfg, resume=res, progress=not no_progress)
    click.echo(
        f"trained {summary['steps']} steps in {summary['train_minutes']:.1f} min -> "
        f"{summary['model']}"
    )
