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
@click.option(
    "--set",
    "-s",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Dotted override, repeatable: -s supernet.num_random=1 -s train.max_minutes=5",
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
    config_path: str, overrides: tuple[str, ...], resume: str | None, no_progress: bool
) -> None:
    """Train a supernet from a recipe CONFIG with a `supernet:` section.

    Each step trains the largest, the smallest and supernet.num_random random subnets of
    supernet.search_space (or of the specs listed in supernet.sample_pool) on one batch (the
    sandwich rule); all but the largest also learn from the largest's output (in-place
    distillation with an adaptive alpha-divergence on the CTC posteriors and/or the pruned RNN-T
    lattice, supernet.kd_on; weight supernet.kd_weight, from supernet.kd_start_step on, ramped
    over supernet.kd_ramp_steps), with dropout scaled by subnet size; one ScaledAdam step over
    the summed gradients. Writes what `asrq train` writes
    (checkpoints/, model.pt = the supernet, train_log.jsonl with per-subnet losses,
    train_summary.json) under train.exp_dir. Multi-process:
    `torchrun --nproc-per-node 2 -m asrq.cli.main supernet train CONFIG` (gloo on CPU).
    """
    from asrq.supernet.train import train_supernet

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = load_config(config_path, overrides)
    res: str | bool = True if resume == "latest" else (resume or False)
    summary = train_supernet(cfg, resume=res, progress=not no_progress)
    click.echo(
        f"trained {summary['steps']} steps in {summary['train_minutes']:.1f} min -> "
        f"{summary['model']}"
    )


@click.command("slice")
@click.argument("checkpoint", metavar="SUPERNET_CKPT", type=click.Path(dir_okay=False))
@click.option(
    "--spec",
    "spec",
    required=True,
    metavar="largest|smallest|SPEC.yaml",
    help="The subnet: largest, smallest, or a YAML file of SubnetSpec fields (num_layers, d_model, "
    "ffn_dim, num_heads, ssm_heads, joiner_dim, predictor_dim; a missing field takes the "
    "supernet's value). Each value must be one of the search space's choices.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Output directory: model.pt (a plain checkpoint) and spec.yaml (the resolved spec).",
)
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
    click.echo(
        f"subnet {res.spec.short()}: {res.params:,} parameters ({pct:.1f}% of the supernet's "
        f"{res.supernet_params:,}) -> {res.path}"
    )


@click.command("search")
@click.argument("checkpoint", metavar="SUPERNET_CKPT", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Output directory: search.json, pareto.png, best_spec.yaml.",
)
@click.option(
    "--cuts",
    "cuts_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Dev cuts to score WER on [default: the checkpoint's data.fbank_dir / data.dev_split].",
)
@click.option(
    "--max-utts",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Dev utterances per candidate.",
)
@click.option(
    "--num-candidates",
    type=click.IntRange(min=2),
    default=32,
    show_default=True,
    help="Candidates: every spec if the space has at most this many, "
    "else largest, smallest and random ones.",
)
@click.option(
    "--budget-ms",
    type=click.FloatRange(min=0),
    default=None,
    help="Latency budget: predicted compute ms per streaming chunk "
    "(timed here or from --latency-table).",
)
@click.option(
    "--max-mb",
    type=click.FloatRange(min=0),
    default=None,
    help="Memory budget in MiB. What it budgets: with a --latency-table that carries measured "
    "memory (`asrq bench SUPERNET --layer-table --memory-from BENCH.json ...`), the predicted "
    "model-attributable peak resident memory on that device's runtime (asrq bench's "
    "model_peak_bytes, fitted linear in the weight bytes); otherwise the file size of the "
    "fp32 weights (4 x parameters / 2^20). search.json's max_mb_budgets says which.",
)
@click.option(
    "--memory-backend",
    default=None,
    help="Runtime whose measured memory --max-mb budgets (onnx, executorch...; a backend of "
    "the table's memory fit). [default: the table's only or first one]",
)
@click.option(
    "--streaming/--full-context",
    default=True,
    show_default=True,
    help="Decode dev chunk by chunk (the deployment mode).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="torch threads for timing and decoding.",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Timings per latency-table entry (median).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the random candidates."
)
@click.option(
    "--latency-table",
    type=click.Path(dir_okay=False),
    default=None,
    help="Predict latencies from this table (e.g. another device's, built there with "
    "`asrq bench SUPERNET_CKPT --layer-table`) instead of timing here.",
)
def search(
    checkpoint: str,
    out_dir: str,
    cuts_path: str | None,
    max_utts: int,
    num_candidates: int,
    budget_ms: float | None,
    max_mb: float | None,
    streaming: bool,
    threads: int,
    repeats: int,
    seed: int,
    latency_table: str | None,
    memory_backend: str | None,
) -> None:
    """Find the subnets of a supernet worth deploying: dev WER vs latency vs size.

    Each candidate subnet is decoded (greedy) on dev cuts through the supernet; its latency per
    streaming chunk is predicted from a per-layer cost table timed on this machine (eager
    PyTorch; or read from --latency-table, a device's table from `asrq bench --layer-table`) and
    its size is its fp32 parameter bytes. Writes the Pareto fronts (WER vs latency, WER vs size)
    to DIR/search.json and DIR/pareto.png, the table used to DIR/latency_table.json, and the
    lowest-WER spec within
    --budget-ms / --max-mb to DIR/best_spec.yaml, ready for
    `asrq slice SUPERNET_CKPT --spec DIR/best_spec.yaml --out ...`.
    """
    from asrq.supernet.search import search as run_search

    res = run_search(
        checkpoint,
        out_dir,
        cuts=cuts_path,
        max_utts=max_utts,
        num_candidates=num_candidates,
        budget_ms=budget_ms,
        max_mb=max_mb,
        streaming=streaming,
        threads=threads,
        repeats=repeats,
        seed=seed,
        log_fn=click.echo,
        latency_table=latency_table,
        memory_backend=memory_backend,
    )
    b = res.best
    click.echo(
        f"best {b.spec.short()}: WER {b.wer:.2f}%, {b.latency_ms:.3f} ms per chunk, "
        f"{b.size_mb:.3f} MB "
        f"({b.params:,} parameters) -> {res.out_dir / 'best_spec.yaml'}"
    )
