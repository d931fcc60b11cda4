"""The latency table of ``asrq search``: the predicted compute time of one streaming chunk of a
subnet spec from a few measured parts (:class:`LatencyTable`, :func:`build_latency_table`), and
the device memory fit (:class:`MemoryFit`). The model and its measurement are described in
:mod:`asrq.supernet.search`, which predicts from it."""

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
from asrq.supernet.spec import SubnetSpec, subnet_model_config
from asrq.utils.io import AsrqError, atomic_write_json

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
