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
  needs only a few measurements. Per chunk of C frames::

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

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from asrq.config import ModelConfig
from asrq.models import build_model
from asrq.supernet.checkpoint import load_supernet
from asrq.supernet.elastic import Supernet
from asrq.supernet.spec import SearchSpace, SubnetSpec, subnet_model_config
from asrq.train.checkpoint import sentencepiece_from_bytes
from asrq.utils.io import AsrqError, atomic_path, atomic_write_json, atomic_write_text

BYTES_PER_PARAM = 4  # fp32
#: the latency table's own JSON fields (the rest is the runtime's ``extra``)
_TABLE_FIELDS = (
    "format",
    "chunk_frames",
    "left_frames",
    "threads",
    "runtime",
    "device",
    "ms_per_chunk",
    "memory",
)


class PartTimer(Protocol):
    """Times the parts of a 1-layer subnet model through a runtime
    (:class:`asrq.export.latency.RuntimePartTimer`)."""

    runtime: str

    def time_parts(
        self,
        cfg: ModelConfig,
        parts: Sequence[str],
        chunk_frames: int,
        left_frames: int,
        keys: dict[str, str] | None = None,
    ) -> dict[str, float]:
        """ms per streaming chunk of each part ("embed", "layer", "head") of model ``cfg``."""
        ...


# --------------------------------------------------------------------------------------------
# latency table
# --------------------------------------------------------------------------------------------
def _median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


@dataclass
class MemoryFit:
    """Model-attributable peak memory of an exported subnet on one runtime of one device, as
    ``asrq bench`` measured it (``model_peak_bytes``), fitted as
    ``fixed_bytes + per_weight_byte * 4 * params`` over the benchmarked exports (least squares
    over two or more sizes; one size: ``fixed_bytes = 0``, a pure scale)."""

    backend: str
    fixed_bytes: float
    per_weight_byte: float
    #: (fp32 weight bytes, measured model peak bytes) per benchmarked export
    points: list[tuple[int, int]] = field(default_factory=list)

    def predict_bytes(self, params: int) -> float:
        return self.fixed_bytes + self.per_weight_byte * BYTES_PER_PARAM * params

    @classmethod
    def from_bench(cls, reports: list[str | Path], backend: str) -> MemoryFit:
        """Fit from ``asrq bench`` reports (``bench.json``) of exports of different sizes: each
        report's largest ``model_peak_bytes`` of ``backend`` over its thread counts."""
        pts: list[tuple[int, int]] = []
        for path in reports:
            try:
                rep = json.loads(Path(path).read_text())
                params = int(rep["model"]["num_parameters"])
                peaks = [int(r["model_peak_bytes"]) for r in rep["runs"] if r["backend"] == backend]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise AsrqError(
                    f"{path}: not an asrq bench report with model_peak_bytes ({e}); re-run "
                    "`asrq bench` to measure model memory"
                ) from None
            if peaks:
                pts.append((BYTES_PER_PARAM * params, max(peaks)))
        if not pts:
            raise AsrqError(f"{list(map(str, reports))}: no {backend} runs to fit memory from")
        xs = [float(x) for x, _ in pts]
        ys = [float(y) for _, y in pts]
        if len(set(xs)) < 2:
            return cls(backend, 0.0, sum(ys) / sum(xs), pts)
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mx) ** 2 for x in xs
        )
        slope = max(slope, 0.0)
        return cls(backend, max(0.0, my - slope * mx), slope, pts)

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "fixed_bytes": round(self.fixed_bytes),
            "per_weight_byte": round(self.per_weight_byte, 6),
            "points": [list(p) for p in self.points],
            "measured_as": "asrq bench model_peak_bytes (resident peak above the baseline)",
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MemoryFit:
        return cls(
            str(d["backend"]),
            float(d["fixed_bytes"]),
            float(d["per_weight_byte"]),
            [(int(a), int(b)) for a, b in d.get("points", [])],
        )


@dataclass
class LatencyTable:
    """Milliseconds per streaming chunk of each part (module doc); keys ``embed d=..``,
    ``layer d=.. f=.. h=.. s=..``, ``head d=.. j=.. p=..``."""

    chunk_frames: int
    left_frames: int
    threads: int
    entries: dict[str, float] = field(default_factory=dict)
    device: dict[str, Any] = field(
        default_factory=dict
    )  # where it was timed (asrq.bench.report.host_info)
    source: str = ""  # the file it was read from, for error messages
    #: what timed the parts: "eager" (PyTorch) or a deployment backend (onnx, executorch)
    runtime: str = "eager"
    #: how the runtime timed them (runner, programs, components per entry); JSON-serialisable
    extra: dict[str, Any] = field(default_factory=dict)
    #: measured memory per runtime backend (``asrq bench --layer-table --memory-from``)
    memory: dict[str, MemoryFit] = field(default_factory=dict)

    @staticmethod
    def keys(spec: SubnetSpec) -> tuple[str, str, str]:
        s = spec
        return (
            f"embed d={s.d_model}",
            f"layer d={s.d_model} f={s.ffn_dim} h={s.num_heads} s={s.ssm_heads}",
            f"head d={s.d_model} j={s.joiner_dim} p={s.predictor_dim}",
        )

    def predict(self, spec: SubnetSpec) -> float:
        missing = [k for k in self.keys(spec) if k not in self.entries]
        if missing:
            where = self.source or "the latency table"
            raise AsrqError(
                f"{where}: no entry {missing[0]!r} for subnet {spec.short()} (build the table from "
                f"this supernet: asrq bench SUPERNET_CKPT --layer-table --out TABLE.json)"
            )
        embed, layer, head = (self.entries[k] for k in self.keys(spec))
        return embed + spec.num_layers * layer + head

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "asrq-latency-table-1",
            "chunk_frames": self.chunk_frames,
            "left_frames": self.left_frames,
            "threads": self.threads,
            "runtime": self.runtime,
            "device": self.device,
            "ms_per_chunk": self.entries,
            **self.extra,
            **({"memory": {b: m.to_json() for b, m in self.memory.items()}} if self.memory else {}),
        }

    def save(self, path: str | Path) -> Path:
        atomic_write_json(Path(path), self.to_json())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """A table written by :meth:`save` (``asrq bench --layer-table``); errors name the file."""
        p = Path(path)
        if not p.is_file():
            raise AsrqError(
                f"{p}: latency table not found (build one: asrq bench SUPERNET_CKPT --layer-table "
                f"--out {p})"
            )
        try:
            d = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AsrqError(f"{p}: not a JSON latency table ({e})") from None
        if not isinstance(d, dict) or d.get("format") != "asrq-latency-table-1":
            raise AsrqError(f'{p}: not an asrq latency table (no "format": "asrq-latency-table-1")')
        try:
            entries = {str(k): float(v) for k, v in d["ms_per_chunk"].items()}
            return cls(
                int(d["chunk_frames"]),
                int(d["left_frames"]),
                int(d["threads"]),
                entries,
                dict(d.get("device") or {}),
                str(p),
                runtime=str(d.get("runtime", "eager")),  # tables before runtimes were eager
                extra={k: v for k, v in d.items() if k not in _TABLE_FIELDS},
                memory={str(b): MemoryFit.from_json(m) for b, m in (d.get("memory") or {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise AsrqError(f"{p}: malformed latency table ({type(e).__name__}: {e})") from None

    def check_streaming(self, chunk_frames: int, left_frames: int) -> None:
        """An error unless the table was timed with this chunk and left context."""
        if (self.chunk_frames, self.left_frames) != (chunk_frames, left_frames):
            raise AsrqError(
                f"{self.source or 'latency table'}: timed with chunk_frames {self.chunk_frames} / "
                "left_frames "
                f"{self.left_frames}, the supernet streams {chunk_frames} / {left_frames}; rebuild "
                "it"
            )

    def measure(
        self,
        cfg: ModelConfig,
        specs: list[SubnetSpec],
        repeats: int = 20,
        progress: Callable[[int, int], None] | None = None,
        timer: PartTimer | None = None,
    ) -> None:
        """Fill the entries the resolved ``specs`` of supernet ``cfg`` need (``progress(i, n)``
        after each spec). ``timer``: time the parts through a deployment runtime
        (:class:`asrq.export.latency.RuntimePartTimer`) instead of eager PyTorch."""
        from asrq.utils.host import host_info

        if not self.device:
            self.device = host_info()
        if timer is not None:
            if timer.runtime != self.runtime:
                raise AsrqError(
                    f"{self.source or 'latency table'}: timed with {self.runtime}, "
                    f"not {timer.runtime}"
                )
            for i, spec in enumerate(specs):
                keys = dict(zip(("embed", "layer", "head"), self.keys(spec), strict=True))
                todo = [p for p, k in keys.items() if k not in self.entries]
                if todo:
                    one = subnet_model_config(cfg, SubnetSpec(**{**asdict(spec), "num_layers": 1}))
                    ms = timer.time_parts(one, todo, self.chunk_frames, self.left_frames, keys)
                    self.entries.update({keys[p]: ms[p] for p in todo})
                if progress:
                    progress(i + 1, len(specs))
            return
        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for i, spec in enumerate(specs):
                if any(k not in self.entries for k in self.keys(spec)):
                    self._measure_one(cfg, spec, repeats)
                if progress:
                    progress(i + 1, len(specs))
        finally:
            torch.set_num_threads(old)

    @torch.inference_mode()
    def _measure_one(self, cfg: ModelConfig, spec: SubnetSpec, repeats: int) -> None:
        k_embed, k_layer, k_head = self.keys(spec)
        torch.manual_seed(0)
        m = build_model(
            subnet_model_config(cfg, SubnetSpec(**{**asdict(spec), "num_layers": 1}))
        ).eval()
        c = self.chunk_frames
        x = torch.randn(1, 4 * c + 3, cfg.encoder.feature_dim)  # one streaming window
        x_lens = torch.tensor([4 * c + 3])
        states = m.encoder.init_states(1, self.left_frames)
        if k_embed not in self.entries:
            self.entries[k_embed] = _median_ms(lambda: m.encoder.embed(x, x_lens), repeats)
        if k_layer not in self.entries:
            full = _median_ms(lambda: m.encoder.streaming_forward(x, x_lens, states), repeats)
            self.entries[k_layer] = max(0.0, full - self.entries[k_embed])
        if k_head not in self.entries:
            enc = torch.randn(1, c, spec.d_model)
            ctx = torch.zeros(1, m.predictor.context_size, dtype=torch.int64)

            def head() -> None:  # encoder projection of the chunk, then C predictor + joiner calls
                e = m.joiner.encoder_proj(enc)
                for t in range(c):
                    p = m.joiner.decoder_proj(m.predictor(ctx, need_pad=False)[:, -1])
                    m.joiner(e[:, t], p, project_input=False)

            self.entries[k_head] = _median_ms(head, repeats)


def build_latency_table(
    checkpoint: str | Path,
    out: str | Path,
    threads: int = 1,
    repeats: int = 20,
    log_fn: Callable[[str], None] | None = None,
    memory_from: list[str | Path] | None = None,
    timer: PartTimer | None = None,
    specs: list[SubnetSpec] | None = None,
) -> LatencyTable:
    """Time every part (embed, layer, head) that any spec of the supernet ``checkpoint``'s search
    space (or of ``specs``) uses, on this machine, and write the table to ``out`` (``asrq bench
    --layer-table``; ``asrq search --latency-table`` reads it). ``memory_from``: ``asrq bench``
    reports of exports measured on the same device: a :class:`MemoryFit` per backend they ran goes
    into the table. ``timer``: time the parts through a deployment runtime
    (:class:`asrq.export.latency.RuntimePartTimer`, its threads), else eager PyTorch."""
    sup = load_supernet(checkpoint)
    st = sup.config.model.streaming
    runtime = "eager" if timer is None else timer.runtime
    table = LatencyTable(st.chunk_frames, st.left_frames, threads, runtime=runtime)
    if memory_from:
        backends = sorted(
            {r["backend"] for p in memory_from for r in json.loads(Path(p).read_text())["runs"]}
        )
        table.memory = {b: MemoryFit.from_bench(list(memory_from), b) for b in backends}

    def tick(i: int, n: int) -> None:
        if log_fn and (i == n or i % max(1, n // 10) == 0):
            log_fn(f"[{i}/{n}] specs covered, {len(table.entries)} table entries")

    specs = sup.space.all_specs() if specs is None else [sup.space.validate(s) for s in specs]
    table.measure(sup.config.model, specs, repeats, progress=tick, timer=timer)
    if timer is not None:
        table.extra = {**timer.info(), "details": dict(sorted(timer.details.items()))}
    table.save(out)
    return table


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
