"""The deploy-many experiment (TODM issue, part 4b; issue 11): one supernet training against
individually trained models of the sizes the supernet exports, with the same per-model step
budget and data.

:func:`deploy_many`:

1. trains the supernet (:func:`asrq.supernet.train.train_supernet`) for ``steps`` steps; the
   random subnets of each step come from ``supernet.sample_pool`` (by default the compared
   ``sizes`` other than the largest and smallest, which train every step anyway);
2. cuts each size out (:func:`asrq.supernet.checkpoint.slice_checkpoint`), the ``sizes`` and
   the ``held_out`` ones: sizes that are *never* in the sample pool (nor the largest or
   smallest), the check that a slice the supernet was not trained on directly still matches
   its twin;
3. trains each size alone from scratch (the sliced model's own config, ``supernet: null``) for
   the same ``steps`` steps with the ordinary trainer;
4. decodes every slice and every twin the way the recipe's decode stage does
   (:func:`asrq.pipeline.decode_splits`: dev, test-clean full context and streaming,
   test-other), each WER with its 95% bootstrap interval, and the paired-bootstrap interval of
   *slice minus twin* on the same utterances per split;
5. writes ``todm.json`` (``sizes``: ``name``, ``spec``, ``params``, ``sampled`` ("every step" /
   "pool" / "never" / "random": how the supernet trained that size), ``supernet`` /
   ``individual`` (the decode entries), ``diff`` (the paired intervals), the older flat
   ``wer_supernet`` / ``wer_individual`` / ``rel_diff_pct`` (test-clean);
   ``supernet_train_minutes``, ``individual_train_minutes_total``) and a markdown table ``todm.md``.

Dev selects, test reports: the experiment itself chooses nothing (fixed sizes, final
checkpoints, the config's settings); settings are to be compared on the ``dev`` columns, and
the test columns are the report.

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


#: Two sizes never in the sample pool (nor the largest or smallest): one between the largest
#: and L6-d120 (8 layers at width 120, a depth no pooled middle size has at that width), one
#: between L6-d96 and the smallest in size (4 layers at width 120).
DEFAULT_HELD_OUT: tuple[Size, ...] = (
    Size(
        "L8-d120",
        SubnetSpec(
            num_layers=8, d_model=120, ffn_dim=432, num_heads=4, joiner_dim=256, predictor_dim=256
        ),
    ),
    Size(
        "L4-d120",
        SubnetSpec(
            num_layers=4, d_model=120, ffn_dim=432, num_heads=4, joiner_dim=128, predictor_dim=128
        ),
    ),
)

#: ``diff`` keys -> the decode entry compared (slice minus individual twin)
SPLITS: tuple[tuple[str, str], ...] = (
    ("dev", "wer_dev"),
    ("test_clean", "wer_test_clean"),
    ("test_clean_streaming", "wer_test_clean_streaming"),
    ("test_other", "wer_test_other"),
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


def _decode(model_path: Path, cfg: ExperimentConfig) -> dict[str, Any]:
    """The recipe decode stage's entries for ``model_path`` (decode JSONs beside it)."""
    from asrq.pipeline import decode_splits

    cuts = Path(cfg.data.fbank_dir) / f"librispeech_cuts_{cfg.data.test_split}.jsonl.gz"
    if not cuts.is_file():
        raise AsrqError(
            f"{cuts}: test cuts not found (run the mini recipe's synth,prepare,bpe stages first)"
        )
    return decode_splits(cfg, model_path, model_path.parent, echo=lambda s: None)


def _paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    from asrq.decode.bootstrap import paired_files

    out = {}
    for name, key in SPLITS:
        if key in a and key in b:
            d = paired_files(a[key]["json"], b[key]["json"])
            out[name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}
    return out


def _ci(e: dict[str, Any] | None) -> str:
    return "" if not e else f"{e['wer']:.2f} [{e['lo']:.2f}, {e['hi']:.2f}]"


def _d(e: dict[str, Any] | None) -> str:
    return "" if not e else f"{e['diff']:+.2f} [{e['lo']:+.2f}, {e['hi']:+.2f}]"


def markdown_table(result: dict[str, Any]) -> str:
    """The test columns report; the dev column is the one to choose settings on."""
    lines = [
        "| size | trained in the supernet | params | test-clean WER: slice % [95% CI] "
        "| individual % [95% CI] | slice - individual, pp [95% CI] | dev: slice - individual "
        "| test-other: slice - individual | streaming test-clean: slice / individual % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["sizes"]:
        sup, ind, diff = s["supernet"], s["individual"], s["diff"]
        lines.append(
            f"| {s['name']} | {s['sampled']} | {s['params']:,} "
            f"| {_ci(sup.get('wer_test_clean'))} | {_ci(ind.get('wer_test_clean'))} "
            f"| {_d(diff.get('test_clean'))} | {_d(diff.get('dev'))} "
            f"| {_d(diff.get('test_other'))} "
            f"| {s['wer_supernet_streaming']:.2f} / {s['wer_individual_streaming']:.2f} |"
        )
    lines.append("")
    lines.append(
        f"Training: supernet {result['supernet_train_minutes']:.1f} min ({result['steps']} "
        f"steps, sandwich of {result['subnets_per_step']} subnets per step, random ones from "
        f"{result['random_subnets_from']}) vs {result['individual_train_minutes_total']:.1f} min "
        f"for the {len(result['sizes'])} individual runs ({result['steps']} steps each). "
        "Negative differences: the slice is better; an interval that excludes 0 holds at 95%."
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


def _sampled(spec: SubnetSpec, ends: set[SubnetSpec], pool: list[SubnetSpec]) -> str:
    if spec in ends:
        return "every step"
    if not pool:
        return "random"
    return "pool" if spec in pool else "never"


def deploy_many(
    base: ExperimentConfig,
    out_dir: str | Path,
    sizes: Sequence[Size] = DEFAULT_SIZES,
    steps: int = 600,
    echo: Callable[[str], None] = print,
    pool_middle: bool = True,
    held_out: Sequence[Size] = DEFAULT_HELD_OUT,
) -> dict[str, Any]:
    """Run the experiment (see the module doc) for the supernet config ``base``; returns the
    result written to ``out_dir/todm.json``. ``pool_middle``: when the config has no
    ``supernet.sample_pool``, the random subnets of each step are drawn from ``sizes`` other
    than the largest and smallest (so every compared size trains directly: stated in each
    row's ``sampled``); False: from the whole search space. ``held_out``: sizes compared too
    but never in the pool (an error if one is, or is the largest or smallest)."""
    from asrq.supernet.checkpoint import slice_checkpoint
    from asrq.supernet.spec import SearchSpace
    from asrq.supernet.train import train_supernet
    from asrq.train.loop import train

    if base.supernet is None:
        raise AsrqError("the todm experiment needs a supernet config (a `supernet:` section)")
    if len(sizes) < 3:
        raise AsrqError(f"the experiment compares K >= 3 sizes, got {len(sizes)}")
    names = [s.name for s in (*sizes, *held_out)]
    if len(set(names)) != len(names):
        raise AsrqError(f"todm sizes: duplicate names in {names}")
    out_dir = Path(out_dir)
    root = out_dir / "todm"
    limits = [f"train.max_steps={steps}", "train.max_minutes=0"]
    sup_cfg = _with(base, [f"train.exp_dir={root / 'supernet'}", *limits])
    assert sup_cfg.supernet is not None
    if not sup_cfg.supernet.sample_pool and pool_middle:
        sup_cfg.supernet.sample_pool = middle_sizes(sup_cfg, sizes)
    space = SearchSpace(sup_cfg.supernet.search_space, sup_cfg.model)
    ends = {space.largest(), space.smallest()}
    pool = space.pool(sup_cfg.supernet.sample_pool) if sup_cfg.supernet.sample_pool else []
    for h in held_out:
        spec = space.validate(h.spec, where=f"todm held-out size {h.name}")
        if _sampled(spec, ends, pool) not in ("never", "random"):
            raise AsrqError(
                f"todm held-out size {h.name}: {spec.short()} is trained directly by the "
                "supernet (in supernet.sample_pool, or the largest / smallest); a held-out size "
                "must not be"
            )
    drawn_from = f"{len(pool)} pooled specs" if pool else "the whole search space"
    echo(
        f"=== supernet: {steps} steps, largest + smallest + {base.supernet.num_random} random "
        f"subnets (from {drawn_from}) per step; held out: {[h.name for h in held_out]}"
    )
    sup_summary = _train_once(sup_cfg, train_supernet)
    sup_model = root / "supernet" / "model.pt"
    records = []
    individual_minutes = 0.0
    for size in (*sizes, *held_out):
        sliced = slice_checkpoint(sup_model, size.spec, root / "slices" / size.name)
        dec_s = _decode(sliced.path, sliced.config)
        sampled = _sampled(sliced.spec, ends, pool)
        echo(
            f"--- {size.name} ({sampled}): slice {sliced.params:,} params, test-clean "
            f"{_ci(dec_s['wer_test_clean'])}%, dev {_ci(dec_s.get('wer_dev'))}%"
        )
        ind_cfg = _with(
            sliced.config, [f"train.exp_dir={root / 'individual' / size.name}", *limits]
        )
        echo(f"=== individual {size.name}: {steps} steps")
        ind_summary = _train_once(ind_cfg, train)
        dec_i = _decode(root / "individual" / size.name / "model.pt", ind_cfg)
        individual_minutes += float(ind_summary["train_minutes"])
        diff = _paired(dec_s, dec_i)
        echo(
            f"--- {size.name}: individual test-clean {_ci(dec_i['wer_test_clean'])}%; slice - "
            f"individual {_d(diff['test_clean'])} pp (dev {_d(diff.get('dev'))})"
        )
        ws, wi = dec_s["wer_test"], dec_i["wer_test"]
        records.append(
            {
                "name": size.name,
                "spec": sliced.spec.to_dict(),
                "params": sliced.params,
                "sampled": sampled,
                "held_out": size in held_out,
                "supernet": {k: v for k, v in dec_s.items() if isinstance(v, dict)},
                "individual": {k: v for k, v in dec_i.items() if isinstance(v, dict)},
                "diff": diff,
                "wer_supernet": ws,
                "wer_individual": wi,
                "rel_diff_pct": round(100.0 * (ws - wi) / max(wi, 1e-9), 2),
                "wer_supernet_streaming": dec_s["wer_test_streaming"],
                "wer_individual_streaming": dec_i["wer_test_streaming"],
                "individual_train_minutes": float(ind_summary["train_minutes"]),
            }
        )
        result = {
            "steps": steps,
            "subnets_per_step": 2 + base.supernet.num_random,
            "random_subnets_from": drawn_from,
            "selection": "none: fixed sizes, final checkpoints; compare settings on dev",
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
