"""The deploy-many experiment (TODM issue, part 4b): one supernet training against K individually
trained models of the sizes the supernet exports, with the same per-model step budget and data.

:func:`deploy_many`:

1. trains the supernet (:func:`asrq.supernet.train.train_supernet`) for ``steps`` steps;
2. cuts each size out (:func:`asrq.supernet.checkpoint.slice_checkpoint`) and decodes test
   (greedy, full context and streaming) with the plain sliced model;
3. trains each size alone from scratch (the sliced model's own config, ``supernet: null``) for
   the same ``steps`` steps with the ordinary trainer, and decodes it the same way;
4. writes ``todm.json`` (``sizes``: ``name``, ``spec``, ``params``, ``wer_supernet``,
   ``wer_individual``, ``rel_diff_pct``...; ``supernet_train_minutes``,
   ``individual_train_minutes_total``) and a markdown table ``todm.md``.

Train minutes are the trainers' own ``train_minutes`` (the step loop, dev evaluations excluded).
Every run lives in its own folder under ``out_dir/todm/`` and is skipped when its
``train_summary.json`` exists, so an interrupted experiment continues.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asrq.config import ExperimentConfig, apply_overrides, from_dict, to_dict
from asrq.supernet.spec import SubnetSpec
from asrq.utils.io import AsrqError, atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class Size:
    name: str
    spec: SubnetSpec


#: Four sizes of the mini supernet (recipes/mini/supernet.yaml): the largest, two middle ones,
#: the smallest.
DEFAULT_SIZES: tuple[Size, ...] = (
    Size(
        "L8-d144",
        SubnetSpec(
            num_layers=8, d_model=144, ffn_dim=576, num_heads=4, joiner_dim=256, predictor_dim=256
        ),
    ),
    Size(
        "L6-d120",
        SubnetSpec(
            num_layers=6, d_model=120, ffn_dim=432, num_heads=4, joiner_dim=256, predictor_dim=256
        ),
    ),
    Size(
        "L6-d96",
        SubnetSpec(
            num_layers=6, d_model=96, ffn_dim=288, num_heads=4, joiner_dim=128, predictor_dim=128
        ),
    ),
    Size(
        "L4-d96",
        SubnetSpec(
            num_layers=4, d_model=96, ffn_dim=288, num_heads=4, joiner_dim=128, predictor_dim=128
        ),
    ),
)


def _with(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    return from_dict(
        ExperimentConfig,
        apply_overrides(copy.deepcopy(to_dict(cfg)), overrides),
        where="todm experiment",
    )


def _train_once(
    cfg: ExperimentConfig, fn: Callable[[ExperimentConfig], dict[str, Any]]
) -> dict[str, Any]:
    done = Path(cfg.train.exp_dir) / "train_summary.json"
    if done.is_file() and (Path(cfg.train.exp_dir) / "model.pt").is_file():
        return json.loads(done.read_text())
    return fn(cfg)


def _decode(model_path: Path, cfg: ExperimentConfig) -> dict[str, float]:
    from asrq.decode.evaluate import evaluate
    from asrq.train.checkpoint import load_model

    loaded = load_model(model_path)
    cuts = Path(cfg.data.fbank_dir) / f"librispeech_cuts_{cfg.data.test_split}.jsonl.gz"
    if not cuts.is_file():
        raise AsrqError(
            f"{cuts}: test cuts not found (run the mini recipe's synth,prepare,bpe stages first)"
        )
    full = evaluate(loaded, cuts, method="greedy", streaming=False, progress=False)
    stream = evaluate(loaded, cuts, method="greedy", streaming=True, progress=False)
    return {"wer": round(full.wer, 2), "wer_streaming": round(stream.wer, 2)}


def markdown_table(result: dict[str, Any]) -> str:
    lines = [
        "| size | params | WER supernet slice % | WER individual % | rel. diff % "
        "| streaming: slice / individual % |",
        "|---|---|---|---|---|---|",
    ]
    for s in result["sizes"]:
        lines.append(
            f"| {s['name']} | {s['params']:,} | {s['wer_supernet']:.2f} "
            f"| {s['wer_individual']:.2f} | {s['rel_diff_pct']:+.1f} "
            f"| {s['wer_supernet_streaming']:.2f} / {s['wer_individual_streaming']:.2f} |"
        )
    lines.append("")
    lines.append(
        f"Training: supernet {result['supernet_train_minutes']:.1f} min ({result['steps']} "
        f"steps, sandwich of {result['subnets_per_step']} subnets per step) vs "
        f"{result['individual_train_minutes_total']:.1f} min for the "
        f"{len(result['sizes'])} individual runs ({result['steps']} steps each)."
    )
    return "\n".join(lines) + "\n"


def middle_sizes(cfg: ExperimentConfig, sizes: Sequence[Size]) -> list[dict[str, int]]:
    """The ``sizes`` other than the search space's largest and smallest subnet, as
    ``supernet.sample_pool`` entries (the sandwich trains those two every step anyway)."""
    from asrq.supernet.spec import SearchSpace

    assert cfg.supernet is not None
    space = SearchSpace(cfg.supernet.search_space, cfg.model)
    ends = {space.largest(), space.smallest()}
    specs = [space.validate(s.spec, where=f"todm size {s.name}") for s in sizes]
    return [{k: v for k, v in s.to_dict().items() if v is not None} for s in specs if s not in ends]


def deploy_many(
    base: ExperimentConfig,
    out_dir: str | Path,
    sizes: Sequence[Size] = DEFAULT_SIZES,
    steps: int = 600,
    echo: Callable[[str], None] = print,
    pool_middle: bool = True,
) -> dict[str, Any]:
    """Run the experiment (see the module doc) for the supernet config ``base``; returns the
    result written to ``out_dir/todm.json``. ``pool_middle``: when the config has no
    ``supernet.sample_pool``, the random subnets of each step are drawn from the compared sizes
    other than the largest and smallest (so every compared size trains directly); False: from
    the whole search space."""
    from asrq.supernet.checkpoint import slice_checkpoint
    from asrq.supernet.train import train_supernet
    from asrq.train.loop import train

    if base.supernet is None:
        raise AsrqError("the todm experiment needs a supernet config (a `supernet:` section)")
    if len(sizes) < 3:
        raise AsrqError(f"the experiment compares K >= 3 sizes, got {len(sizes)}")
    out_dir = Path(out_dir)
    root = out_dir / "todm"
    limits = [f"train.max_steps={steps}", "train.max_minutes=0"]
    sup_cfg = _with(base, [f"train.exp_dir={root / 'supernet'}", *limits])
    assert sup_cfg.supernet is not None
    if not sup_cfg.supernet.sample_pool and pool_middle:
        sup_cfg.supernet.sample_pool = middle_sizes(sup_cfg, sizes)
    pool = (
        f"{len(sup_cfg.supernet.sample_pool)} pooled specs"
        if sup_cfg.supernet.sample_pool
        else "the search space"
    )
    echo(
        f"=== supernet: {steps} steps, largest + smallest + {base.supernet.num_random} random "
        f"subnets (from {pool}) per step"
    )
    sup_summary = _train_once(sup_cfg, train_supernet)
    sup_model = root / "supernet" / "model.pt"
    records = []
    individual_minutes = 0.0
    for size in sizes:
        sliced = slice_checkpoint(sup_model, size.spec, root / "slices" / size.name)
        wer_s = _decode(sliced.path, sliced.config)
        echo(
            f"--- {size.name}: slice {sliced.params:,} params, test WER {wer_s['wer']:.2f}% "
            f"(streaming {wer_s['wer_streaming']:.2f}%)"
        )
        ind_cfg = _with(
            sliced.config, [f"train.exp_dir={root / 'individual' / size.name}", *limits]
        )
        echo(f"=== individual {size.name}: {steps} steps")
        ind_summary = _train_once(ind_cfg, train)
        wer_i = _decode(root / "individual" / size.name / "model.pt", ind_cfg)
        individual_minutes += float(ind_summary["train_minutes"])
        echo(
            f"--- {size.name}: individual test WER {wer_i['wer']:.2f}% "
            f"(streaming {wer_i['wer_streaming']:.2f}%)"
        )
        records.append(
            {
                "name": size.name,
                "spec": sliced.spec.to_dict(),
                "params": sliced.params,
                "wer_supernet": wer_s["wer"],
                "wer_individual": wer_i["wer"],
                "rel_diff_pct": round(
                    100.0 * (wer_s["wer"] - wer_i["wer"]) / max(wer_i["wer"], 1e-9), 2
                ),
                "wer_supernet_streaming": wer_s["wer_streaming"],
                "wer_individual_streaming": wer_i["wer_streaming"],
                "individual_train_minutes": float(ind_summary["train_minutes"]),
            }
        )
        result = {
            "steps": steps,
            "subnets_per_step": 2 + base.supernet.num_random,
            "supernet": {k: v for k, v in to_dict(sup_cfg.supernet).items() if k != "search_space"},
            "sizes": records,
            "supernet_train_minutes": float(sup_summary["train_minutes"]),
            "individual_train_minutes_total": round(individual_minutes, 3),
        }
        atomic_write_json(out_dir / "todm.json", result)  # partial results survive a stop
    table = markdown_table(result)
    atomic_write_text(out_dir / "todm.md", table)
    echo(table)
    return result
