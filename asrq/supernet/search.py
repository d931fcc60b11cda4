"""Searching a trained supernet for the subnets worth deploying (``asrq search``).

For each candidate spec (every spec of the search space when there are at most
``num_candidates``, else the largest, the smallest and random distinct specs):

- **WER**: greedy decoding of dev cuts through the supernet at that spec
  (:meth:`Supernet.active`; the same numbers a sliced model gives, see
  :mod:`asrq.supernet.elastic`), streaming by default;
- **size**: parameters and fp32 megabytes (``4 * params / 2^20``, the weights' file size);
- **memory** (when the latency table carries a :class:`MemoryFit` measured on a device): the
  predicted model-attributable peak memory of the exported subnet on that device's runtime
  (``model_peak_bytes`` of ``asrq bench``, fitted linear in the weight bytes);
- **latency**: predicted compute time of one streaming chunk on this machine from a
  :class:`LatencyTable` (eager PyTorch, ``threads`` intra-op threads; or a table timed through a
  deployment runtime, :mod:`asrq.export.latency`, whose ``runtime`` it records), so a large space
  needs only a few measurements (both classes: :mod:`asrq.supernet.latency_table`). Per chunk
  of C frames::

      latency(spec) = embed(d) + num_layers * layer(d, f, h, h_s) + head(d, j, p)

  ``embed(d)``: the subsampling of one ``4C + 3``-frame window; ``layer``: one encoder layer's
  streaming step, measured as a 1-layer encoder's ``streaming_forward`` minus ``embed`` (so it
  carries the output LayerNorm too); ``head``: the joiner's encoder projection of C frames plus
  C joiner and C predictor calls (greedy search with one symbol per frame: an upper bound).
  Each entry is the median of ``repeats`` timings of a randomly initialized plain model with
  those dims. For latencies of the exported runtimes use ``asrq slice`` + ``asrq export`` +
  ``asrq bench`` on the chosen specs.

Outputs: the Pareto fronts (WER vs latency, WER vs size: no other candidate is at least as
good in both and better in one), the best spec under ``budget_ms`` / ``max_mb`` (``max_mb``
budgets the predicted measured memory when the table has a memory fit, else the fp32 size; the
report's ``max_mb_budgets`` says which) (lowest WER,
then lowest latency, then smallest), ``search.json``, ``pareto.png`` and ``best_spec.yaml``
(for ``asrq slice --spec``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asrq.supernet.checkpoint import load_supernet
from asrq.supernet.elastic import Supernet
from asrq.supernet.latency_table import BYTES_PER_PARAM, LatencyTable
from asrq.supernet.spec import SearchSpace, SubnetSpec
from asrq.train.checkpoint import sentencepiece_from_bytes
from asrq.utils.io import AsrqError, atomic_path, atomic_write_json, atomic_write_text


# --------------------------------------------------------------------------------------------
# candidates and Pareto fronts
# --------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    spec: SubnetSpec
    params: int
    size_mb: float
    latency_ms: float
    wer: float = float("nan")
    pareto_latency: bool = False
    pareto_size: bool = False
    #: predicted measured peak memory (MiB) on the table's device, when it has a memory fit
    memory_mb: float | None = None

    @property
    def budget_mb(self) -> float:
        """What ``--max-mb`` compares: measured memory when known, else the fp32 size."""
        return self.size_mb if self.memory_mb is None else self.memory_mb

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "name": self.spec.short(),
            "params": self.params,
            "size_mb": round(self.size_mb, 4),
            "memory_mb": None if self.memory_mb is None else round(self.memory_mb, 4),
            "latency_ms": round(self.latency_ms, 4),
            "wer": self.wer,
            "pareto_latency": self.pareto_latency,
            "pareto_size": self.pareto_size,
        }


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """Whether each ``(cost, error)`` point is Pareto-optimal (both minimized): no other point is
    at most as large in both and smaller in one."""
    return [
        not any(
            c2 <= c and e2 <= e and (c2 < c or e2 < e)
            for j, (c2, e2) in enumerate(points)
            if j != i
        )
        for i, (c, e) in enumerate(points)
    ]


def choose(cands: list[Candidate], budget_ms: float | None, max_mb: float | None) -> Candidate:
    """The lowest-WER candidate within the budgets (ties: lower latency, then smaller)."""
    ok = [
        c
        for c in cands
        if (budget_ms is None or c.latency_ms <= budget_ms)
        and (max_mb is None or c.budget_mb <= max_mb)
    ]
    if not ok:
        fastest = min(cands, key=lambda c: c.latency_ms)
        smallest = min(cands, key=lambda c: c.budget_mb)
        what = "fp32 MB" if smallest.memory_mb is None else "MiB of measured memory"
        raise AsrqError(
            f"no candidate within --budget-ms {budget_ms} / --max-mb {max_mb}: the fastest takes "
            f"{fastest.latency_ms:.3f} ms per chunk ({fastest.spec.short()}), the smallest is "
            f"{smallest.budget_mb:.3f} {what} ({smallest.spec.short()})"
        )
    return min(ok, key=lambda c: (c.wer, c.latency_ms, c.size_mb))


def candidate_specs(space: SearchSpace, num: int, seed: int) -> list[SubnetSpec]:
    """Every spec when there are at most ``num``; else largest, smallest and random distinct
    ones."""
    if space.size() <= num:
        return space.all_specs()
    out = [space.largest(), space.smallest()]
    g = torch.Generator().manual_seed(seed)
    for _ in range(100 * num):
        if len(out) >= num:
            break
        s = space.sample(g)
        if s not in out:
            out.append(s)
    return out


# --------------------------------------------------------------------------------------------
# the search
# --------------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    candidates: list[Candidate]
    best: Candidate
    table: LatencyTable
    out_dir: Path


def plot_pareto(cands: list[Candidate], best: Candidate, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, cost, flag, label in (
        (axes[0], "latency_ms", "pareto_latency", "predicted ms per chunk"),
        (axes[1], "size_mb", "pareto_size", "fp32 MB"),
    ):
        xs = [getattr(c, cost) for c in cands]
        ax.scatter(xs, [c.wer for c in cands], s=14, color="0.6", label="candidates")
        front = sorted((getattr(c, cost), c.wer) for c in cands if getattr(c, flag))
        ax.plot(
            [p[0] for p in front], [p[1] for p in front], "o-", color="C0", label="Pareto front"
        )
        ax.scatter(
            [getattr(best, cost)],
            [best.wer],
            s=80,
            marker="*",
            color="C3",
            label=f"best {best.spec.short()}",
            zorder=3,
        )
        ax.set_xlabel(label)
        ax.set_ylabel("WER %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def search(
    checkpoint: str | Path,
    out_dir: str | Path,
    cuts: str | Path | None = None,
    max_utts: int | None = 50,
    num_candidates: int = 32,
    budget_ms: float | None = None,
    max_mb: float | None = None,
    streaming: bool = True,
    threads: int = 1,
    repeats: int = 20,
    seed: int = 0,
    progress: bool = False,
    log_fn: Callable[[str], None] | None = None,
    latency_table: str | Path | None = None,
    memory_backend: str | None = None,
) -> SearchResult:
    """Evaluate candidate subnets of the supernet ``checkpoint`` and pick one (module doc).
    ``cuts``: dev cuts (default: the checkpoint's ``data.fbank_dir`` / ``data.dev_split``).
    ``latency_table``: predict latencies from this saved table (another device's, built with
    ``asrq bench --layer-table``) instead of timing the parts here; when it carries measured
    memory (:class:`MemoryFit`), ``max_mb`` budgets that (of ``memory_backend``, default the
    only or first one) instead of the fp32 size."""
    from asrq.decode.evaluate import evaluate_model

    sup = load_supernet(checkpoint)
    cfg = sup.config
    if cuts is None:
        cuts = Path(cfg.data.fbank_dir) / f"librispeech_cuts_{cfg.data.dev_split}.jsonl.gz"
    if not Path(cuts).is_file():
        raise AsrqError(f"{cuts}: dev cuts not found (pass --cuts)")
    specs = candidate_specs(sup.space, num_candidates, seed)
    sn = Supernet(sup.model, cfg.model)
    st = cfg.model.streaming
    if latency_table is not None:
        table = LatencyTable.load(latency_table)
        table.check_streaming(st.chunk_frames, st.left_frames)
        for spec in specs:
            table.predict(spec)  # every candidate covered, before any decoding
    else:
        table = LatencyTable(st.chunk_frames, st.left_frames, threads)
        table.measure(cfg.model, specs, repeats)
    mem = None
    if table.memory:
        if memory_backend is not None and memory_backend not in table.memory:
            raise AsrqError(
                f"{table.source}: no measured memory for {memory_backend!r} "
                f"(it has {sorted(table.memory)})"
            )
        mem = table.memory[memory_backend or sorted(table.memory)[0]]
    elif memory_backend is not None:
        raise AsrqError(
            f"--memory-backend {memory_backend}: the latency table has no measured memory "
            "(build it with `asrq bench SUPERNET --layer-table --memory-from BENCH.json ...`)"
        )
    sp = sentencepiece_from_bytes(sup.bpe_model_bytes)
    cands = []
    for i, spec in enumerate(specs):
        params = sn.num_params(spec)
        c = Candidate(spec, params, BYTES_PER_PARAM * params / 2**20, table.predict(spec))
        if mem is not None:
            c.memory_mb = mem.predict_bytes(params) / 2**20
        with torch.no_grad(), sn.active(spec) as model:
            c.wer = evaluate_model(
                model,
                sp,
                cuts,
                "greedy",
                streaming,
                st.chunk_frames,
                st.left_frames,
                max_utts=max_utts,
                progress=progress,
                threads=threads,
            ).wer
        cands.append(c)
        if log_fn:
            log_fn(
                f"[{i + 1}/{len(specs)}] {spec.short()}: WER {c.wer:.2f}%  {c.latency_ms:.3f} "
                f"ms/chunk  {c.size_mb:.3f} MB"
            )
    for flag, cost in (("pareto_latency", "latency_ms"), ("pareto_size", "size_mb")):
        for c, on in zip(
            cands, pareto_front([(getattr(c, cost), c.wer) for c in cands]), strict=True
        ):
            setattr(c, flag, on)
    best = choose(cands, budget_ms, max_mb)
    out = Path(out_dir)
    report = {
        "checkpoint": str(checkpoint),
        "cuts": str(cuts),
        "max_utts": max_utts,
        "streaming": streaming,
        "threads": threads,
        "budget_ms": budget_ms,
        "max_mb": max_mb,
        "max_mb_budgets": (
            f"measured memory: predicted model_peak_bytes on {mem.backend} (MiB)"
            if mem is not None
            else "fp32 parameter size (4 x params / 2^20 MB)"
        ),
        "search_space_size": sup.space.size(),
        "latency_table": {**table.to_json(), "source": table.source or "timed here"},
        "best": best.to_json(),
        "pareto_latency": [
            c.spec.short() for c in sorted(cands, key=lambda c: c.latency_ms) if c.pareto_latency
        ],
        "pareto_size": [
            c.spec.short() for c in sorted(cands, key=lambda c: c.size_mb) if c.pareto_size
        ],
        "candidates": [c.to_json() for c in cands],
    }
    atomic_write_json(out / "search.json", report)
    atomic_write_text(out / "best_spec.yaml", best.spec.dump_yaml())
    table.save(out / "latency_table.json")
    plot_pareto(cands, best, out / "pareto.png")
    return SearchResult(cands, best, table, out)
