"""``asrq qat``: quantization-aware training (asrq.quant)."""

from __future__ import annotations

import json
import logging

import click


@click.group()
def qat() -> None:
    """Quantization-aware training: fine-tune an fp32 checkpoint with fake quantization."""


@qat.command("train")
@click.argument("config_path", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--init",
    "init",
    type=click.Path(dir_okay=False),
    default=None,
    help="The fp32 checkpoint to fine-tune (e.g. exp/mini/model.pt); sets qat.init.",
)
@click.option(
    "--set",
    "-s",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Dotted override, repeatable: -s qat.quant.estimator=noise -s train.max_steps=200",
)
@click.option(
    "--resume",
    is_flag=False,
    flag_value="latest",
    default=None,
    metavar="[CKPT]",
    help="Continue from a QAT checkpoint: the latest in <exp_dir>/checkpoints, or the given file.",
)
@click.option(
    "--no-progress", is_flag=True, help="Disable the progress bar (JSON log lines still print)."
)
def train(
    config_path: str | None,
    init: str | None,
    overrides: tuple[str, ...],
    resume: str | None,
    no_progress: bool,
) -> None:
    """Fine-tune a trained fp32 model with fake quantization (LSQ step sizes).

    CONFIG is the recipe YAML the checkpoint was trained with, plus an optional qat: section
    (asrq.quant.config.QatConfig: init, calib_batches, scale_lr_scale, and quant: weight_dtype
    int8|int4, weight_qmax (63: 7-bit weights for onnxruntime on x86), group_size, activations,
    outputs, estimator ste|noise|squat, noise_init, noise_decay_steps, squat_rho, include,
    overrides). Set train.exp_dir to a new directory and train.optim.lr to a fine-tuning rate.

    Writes <train.exp_dir>/checkpoints/ckpt-<step>.pt (resumable), model.pt (weights + learned
    step sizes + the resolved config with its qat: section), train_log.jsonl and
    train_summary.json (printed as JSON at the end).
    """
    import dataclasses

    from asrq.config import load_config
    from asrq.quant.config import QatConfig
    from asrq.quant.train import qat_train

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = load_config(config_path, overrides)
    if cfg.qat is None:  # a recipe without a qat: section: the defaults
        cfg = dataclasses.replace(cfg, qat=QatConfig())
    if init:
        cfg.qat.init = init
    res: str | bool = False
    if resume == "latest":
        res = True
    elif resume:
        res = resume
    summary = qat_train(cfg, resume=res, progress=not no_progress)
    click.echo(json.dumps(summary))
