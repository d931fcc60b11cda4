"""``asrq supernet train`` and ``asrq slice``: train a TODM supernet, cut subnets out of it."""

from __future__ import annotations

import logging

import click

from asrq.config import load_config


@click.group()
def supernet() -> None:
    """Supernets: train once, deploy many (TODM, arXiv 2309.01947).

    \b
    A supernet is one RNN-T model whose subnets (its first layers, channels and heads, as
    listed in the config's supernet.search_space) are trained together; any subnet is then cut
    out as an ordinary model with `asrq slice`:
      asrq supernet train recipes/mini/supernet.yaml
      asrq slice exp/mini_supernet/model.pt --spec smallest --out exp/mini_supernet/smallest
      asrq decode exp/mini_supernet/smallest/model.pt
    """


@supernet.command("train")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Dotted override, repeatable: -s supernet.num_random=1 -s train.max_minutes=5")
@click.option("--resume", is_flag=False, flag_value="latest", default=None, metavar="[CKPT]",
              help="Continue from a checkpoint: the latest in <exp_dir>/checkpoints, or the given file.")
@click.option("--no-progress", is_flag=True, help="Disable the progress bar (JSON log lines still print).")
def train(config_path: str, overrides: tuple[str, ...], resume: str | None, no_progress: bool) -> None:
    """Train a supernet from a recipe CONFIG with a `supernet:` section.

    Each step trains the largest, the smallest and supernet.num_random random subnets of
    supernet.search_space on one batch (the sandwich rule); all but the largest also learn from
    the largest's output (in-place distillation with an adaptive alpha-divergence on the CTC
    posteriors and/or the pruned RNN-T lattice, supernet.kd_on), with dropout scaled by subnet
    size; one ScaledAdam step over the summed gradients. Writes what `asrq train` writes
    (checkpoints/, model.pt = the supernet, train_log.jsonl with per-subnet losses,
    train_summary.json) under train.exp_dir. Multi-process:
    `torchrun --nproc-per-node 2 -m asrq.cli.main supernet train CONFIG` (gloo on CPU).
    """
    from asrq.supernet.train import train_supernet

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(config_path, overrides)
    res: str | bool = True if resume == "latest" else (resume or False)
    summary = train_supernet(cfg, resume=res, progress=not no_progress)
    click.echo(f"trained {summary['steps']} steps in {summary['train_minutes']:.1f} min -> {summary['model']}")


@click.command("slice")
@click.argument("checkpoint", metavar="SUPERNET_CKPT", type=click.Path(dir_okay=False))
@click.option("--spec", "spec", required=True, metavar="largest|smallest|SPEC.yaml",
              help="The subnet: largest, smallest, or a YAML file of SubnetSpec fields (num_layers, d_model, "
                   "ffn_dim, num_heads, ssm_heads, joiner_dim, predictor_dim; a missing field takes the "
                   "supernet's value). Each value must be one of the search space's choices.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output directory: model.pt (a plain checkpoint) and spec.yaml (the resolved spec).")
def slice_(checkpoint: str, spec: str, out_dir: str) -> None:
    """Cut one subnet out of a supernet checkpoint as an ordinary model.

    The written DIR/model.pt holds only the subnet's weights and its own resolved config
    (no supernet section) and the BPE model, so `asrq decode`, `asrq export`, `asrq transcribe`
    and `asrq bench` use it as they use any trained model; it computes exactly what the
    supernet computes for that subnet. A spec outside the supernet's search space is an error
    and nothing is written.
    """
    from asrq.supernet.checkpoint import slice_checkpoint

    res = slice_checkpoint(checkpoint, spec, out_dir)
    pct = 100.0 * res.params / max(1, res.supernet_params)
    click.echo(f"subnet {res.spec.short()}: {res.params:,} parameters ({pct:.1f}% of the supernet's "
               f"{res.supernet_params:,}) -> {res.path}")
