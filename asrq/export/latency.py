"""Per-part streaming latencies measured through a deployment runtime (``asrq bench
--layer-table --runtime onnx|executorch``): each part of a subnet is exported as its own small
program with the backend's exporter (:data:`asrq.export.backends.EXPORTERS`: the same capture,
lowering and XNNPACK delegation as ``asrq export``) and timed with the backend's program runner
(:data:`asrq.runtime.backends.BACKENDS`: onnxruntime sessions, or the ExecuTorch runtime's Python
bindings with the XNNPACK delegate, the runtime ``asrq bench --backend executorch`` times).

The parts of one streaming chunk of ``C`` encoder frames, from a 1-layer model of the subnet's
dims (random weights: the cost does not depend on them):

- ``embed``: the subsampling of one ``4C + 3``-frame fbank window, one program call
  (``encoder.embed``). Its time carries the runtime's per-call overhead, which the deployed
  streaming encoder pays once per chunk.
- ``layer``: one encoder layer with its streaming states as inputs and outputs
  (``encoder.streaming_layers`` of a 1-layer encoder: attention mask, the layer, the stacked new
  states), minus the per-call overhead of a no-op program (``null``: ``x + 1`` on (1, C, D)),
  since the deployed encoder runs all its layers in one call.
- ``head``: the tail of the streaming encoder (``out_norm`` + the joiner's ``encoder_proj`` over C
  frames, minus the ``null`` overhead) plus greedy search over the C frames through the
  ``predictor`` and ``joiner`` programs of the deployed export (the same
  :func:`asrq.decode.search.greedy_advance` ``asrq bench`` times). Greedy's cost depends on how
  often a symbol is emitted (a predictor call per symbol), so it is timed twice, with a joiner
  whose output bias forces blank on every frame (``greedy_blank``) and one forcing a symbol on
  every frame (``greedy_emit``), and ``head = proj + blank + r * (emit - blank)`` for
  ``r = symbols_per_frame`` (1.0, the default, is the upper bound the eager table also takes).

The programs run in rounds in the order a streaming step runs them (subsampling, layer, tail,
greedy), each call timed on its own, so the caches hold what they would in a real step (timing a
part in a tight loop of its own keeps its weights hot and under-predicts); each time is the median
over ``repeats`` rounds after a warm-up. Exported parts are cached in
``cache_dir`` under a fingerprint of the program (its module, example shapes, backend and the
library versions), so parts shared by many subnets (``embed`` per ``d_model``, the predictor per
``(p, j)``) are lowered once, and a rebuilt table re-uses every program.
"""

from __future__ import annotations

import copy
import hashlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from asrq.config import ModelConfig, to_dict
from asrq.decode.search import GreedyState, greedy_advance
from asrq.export.backends import FileMetadata, get_exporter
from asrq.export.heads import export_head
from asrq.export.rnnt import JoinerProgram
from asrq.export.spec import ProgramSpec
from asrq.models import build_model
from asrq.runtime.backends import get_backend, open_programs
from asrq.utils.io import AsrqError

#: The part kinds of a latency table entry, in the order the table keys list them.
PARTS = ("embed", "layer", "head")
#: Logit bias that makes the joiner's argmax a chosen token whatever its inputs.
_FORCE_BIAS = 1.0e4


# --------------------------------------------------------------------------------------------
# the part programs
# --------------------------------------------------------------------------------------------
class EmbedPart(nn.Module):
    """The subsampling: x (1, 4C + 3, F), x_lens (1,) -> (1, C, D), (1,)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.embed = model.encoder.embed

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        return self.embed(x, x_lens)


class LayerPart(nn.Module):
    """The layers of a 1-layer encoder on one subsampled chunk with its states:
    (x (1, C, D), lens (1,), *states) -> (x (1, C, D), *new_states)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, x: Tensor, lens: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        y, new = self.encoder.streaming_layers(x, lens, list(states))
        return (y, *new)


class ProjPart(nn.Module):
    """The streaming encoder's tail: ``encoder_proj(out_norm(x))``: (1, C, D) -> (1, C, J)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.out_norm = model.encoder.out_norm
        self.encoder_proj = model.joiner.encoder_proj

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder_proj(self.out_norm(x))


class NullPart(nn.Module):
    """A program that does (almost) nothing: its time is the runtime's per-call overhead."""

    def forward(self, x: Tensor) -> Tensor:
        return x + 1.0


def _forced_joiner(model: nn.Module, token: int) -> nn.Module:
    """:class:`~asrq.export.rnnt.JoinerProgram` of a copy of the joiner whose argmax is ``token``
    (``model`` is left as it is)."""
    joiner = copy.deepcopy(model.joiner)
    # the program takes projected inputs: drop the projections, so the program (and its cache
    # fingerprint) does not depend on the encoder's width
    joiner.encoder_proj = joiner.decoder_proj = None
    with torch.no_grad():
        joiner.output_linear.bias[token] += _FORCE_BIAS
    return JoinerProgram(SimpleNamespace(joiner=joiner)).eval()


def part_specs(
    model: nn.Module, chunk_frames: int, left_frames: int, backend: str
) -> dict[str, ProgramSpec]:
    """The programs the parts are timed with (module doc), for an eval-mode 1-layer RNN-T model:
    ``embed``, ``layer``, ``proj``, ``null`` at batch 1 and static shapes; ``predictor`` (the
    export's own spec) and ``joiner_blank`` / ``joiner_emit`` (the export's joiner spec with a
    forcing bias)."""
    _, head = export_head(model)
    full = head.program_specs(model, chunk_frames, left_frames, backend)
    if "predictor" not in full or "joiner" not in full:
        raise AsrqError(
            f"latency tables time transducer heads (predictor + joiner); this model's export has "
            f"{list(full)}"
        )
    g = torch.Generator().manual_seed(0)
    enc = model.encoder
    c, d, f = chunk_frames, enc.cfg.d_model, enc.cfg.feature_dim
    w = 4 * c + 3
    x = torch.randn(1, w, f, generator=g)
    h = torch.randn(1, c, d, generator=g)
    lens = torch.tensor([c], dtype=torch.int64)
    states = [s.zeros() for s in enc.state_specs(1, left_frames)]
    names = [s.name for s in enc.state_specs(1, left_frames)]
    blank = int(model.blank_id)
    emit = (blank + 1) % int(model.vocab_size)
    return {
        "embed": ProgramSpec(
            "embed",
            EmbedPart(model).eval(),
            (x, torch.tensor([w])),
            ["x", "x_lens"],
            ["x_sub", "lens"],
        ),
        "layer": ProgramSpec(
            "layer",
            LayerPart(model).eval(),
            (h, lens, *states),
            ["x", "lens", *names],
            ["y", *(f"new_{n}" for n in names)],
        ),
        "proj": ProgramSpec("proj", ProjPart(model).eval(), (h,), ["x"], ["encoder_out"]),
        "null": ProgramSpec("null", NullPart().eval(), (h,), ["x"], ["y"]),
        "predictor": full["predictor"],
        "joiner_blank": replace(
            full["joiner"], name="joiner_blank", module=_forced_joiner(model, blank)
        ),
        "joiner_emit": replace(
            full["joiner"], name="joiner_emit", module=_forced_joiner(model, emit)
        ),
    }


#: The programs each part kind needs.
PART_PROGRAMS: dict[str, tuple[str, ...]] = {
    "embed": ("embed",),
    "layer": ("layer", "null"),
    "head": ("proj", "null", "predictor", "joiner_blank", "joiner_emit"),
}


def fingerprint(spec: ProgramSpec, backend: str, extra: dict[str, Any]) -> str:
    """A short hash naming an exported part program: what it computes (the module's structure,
    ``extra`` config), its example shapes, the backend and the library versions."""
    from asrq.export.pipeline import version_info

    key = {
        "program": spec.name,
        "backend": backend,
        "module": repr(spec.module),
        "inputs": [[list(t.shape), str(t.dtype)] for t in spec.example_inputs],
        "dynamic": repr(spec.dynamic_shapes),
        "extra": extra,
        "versions": version_info(),
    }
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------
def round_medians(
    steps: dict[str, Callable[[], Any]], repeats: int, warmup: int = 3
) -> dict[str, float]:
    """Run every step once per round, in order, timing each call; median ms per step over
    ``repeats`` rounds after ``warmup`` rounds."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(warmup + repeats):
        for k, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            dt = (time.perf_counter() - t0) * 1000.0
            if r >= warmup:
                times[k].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


class _PartHead:
    """:class:`~asrq.decode.interface.RnntComponents` over the part programs, calling them as
    :class:`asrq.runtime.rnnt.ExportedRnnt` does (``run_batched``: the planned-batch check, then
    the program)."""

    def __init__(self, runner: Any, predictor: str, joiner: str, blank_id: int, ctx: int) -> None:
        self.runner, self.predictor, self.joiner = runner, predictor, joiner
        self.blank_id, self.context_size = blank_id, ctx

    def _run(self, name: str, inputs: list[Tensor]) -> Tensor:
        self.runner.max_batch(name)  # as run_batched does on every call
        return self.runner.run(name, inputs)[0]

    def predict(self, context: Tensor) -> Tensor:
        return self._run(self.predictor, [context.to(torch.int64)])

    def join(self, enc: Tensor, pred: Tensor) -> Tensor:
        return self._run(self.joiner, [enc.float(), pred.float()])


@dataclass
class RuntimePartTimer:
    """Times the parts of :data:`PARTS` through ``backend``'s runtime with ``threads`` threads
    (module doc); the timer :meth:`asrq.supernet.latency_table.LatencyTable.measure` takes."""

    backend: str
    threads: int
    cache_dir: Path
    repeats: int = 30
    symbols_per_frame: float = 1.0
    log_fn: Callable[[str], None] | None = None
    #: per table key: the components behind its entry (ms), for the table's ``details``
    details: dict[str, dict[str, float]] = field(default_factory=dict)
    #: programs lowered by this timer, and their total export seconds
    exported: int = 0
    export_seconds: float = 0.0
    cached: int = 0

    def __post_init__(self) -> None:
        get_backend(self.backend)
        if not 0.0 <= self.symbols_per_frame <= 1.0:
            raise AsrqError(f"symbols_per_frame must be in [0, 1] (got {self.symbols_per_frame})")
        self.cache_dir = Path(self.cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._runner: Any = None

    @property
    def runtime(self) -> str:
        return self.backend

    def info(self) -> dict[str, Any]:
        """What the table records about this runtime."""
        return {
            "runtime": self.backend,
            "runner": "asrq.runtime.backends "
            + {
                "onnx": "onnxruntime CPUExecutionProvider",
                "executorch": "ExecuTorch pybindings + XNNPACK delegate (fp32)",
            }.get(self.backend, self.backend),  # fmt: skip
            "symbols_per_frame": self.symbols_per_frame,
            "repeats": self.repeats,
            "programs_exported": self.exported,
            "programs_cached": self.cached,
            "export_seconds": round(self.export_seconds, 1),
            "cache_dir": str(self.cache_dir),
        }

    def runner(self) -> Any:
        if self._runner is None:
            self._runner = open_programs(self.cache_dir, self.backend, self.threads)
        return self._runner

    def _program(self, spec: ProgramSpec, extra: dict[str, Any]) -> str:
        """Export ``spec`` into the cache unless there -> its program name in the cache dir."""
        name = f"{spec.name}-{fingerprint(spec, self.backend, extra)}"
        path = get_backend(self.backend).program_path(self.cache_dir, name)
        if path.is_file():
            self.cached += 1
            return name
        t0 = time.perf_counter()
        get_exporter(self.backend)(spec, path, FileMetadata({"program": name}, {}), 18)
        dt = time.perf_counter() - t0
        self.exported += 1
        self.export_seconds += dt
        if self.log_fn:
            self.log_fn(f"  exported {name} ({self.backend}, {dt:.1f} s)")
        return name

    def time_parts(
        self,
        cfg: ModelConfig,
        parts: Sequence[str],
        chunk_frames: int,
        left_frames: int,
        keys: dict[str, str] | None = None,
    ) -> dict[str, float]:
        """ms per chunk of each of ``parts`` (of :data:`PARTS`) of the 1-layer model ``cfg``.
        ``keys``: the table key of each part (for :attr:`details`).

        Every part's programs are run (exports are cached, so parts already in the table cost
        little), in rounds in the order a streaming step runs them (subsampling, layer, tail,
        greedy), each call timed on its own, so that caches hold what they would between the
        encoder and the search of a real step; medians over ``repeats`` rounds."""
        unknown = [p for p in parts if p not in PARTS]
        if unknown:
            raise AsrqError(f"unknown latency-table part {unknown[0]!r}; have {list(PARTS)}")
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        specs = part_specs(model, chunk_frames, left_frames, self.backend)
        enc_cfg = {**to_dict(cfg.encoder), "num_layers": 1}
        # the head programs' dims are in their module reprs; add what a repr does not show
        head_cfg = {
            "context_size": int(model.predictor.context_size),
            "vocab": int(model.vocab_size),
        }
        names = {
            p: self._program(
                specs[p], enc_cfg if p in ("embed", "layer", "proj") else head_cfg | {"p": p}
            )
            for p in sorted({p for progs in PART_PROGRAMS.values() for p in progs})
        }
        runner = self.runner()

        def call(p: str) -> Callable[[], Any]:
            inputs = [t.clone() for t in specs[p].example_inputs]
            return lambda: runner.run(names[p], inputs)

        c, j = chunk_frames, int(model.joiner.encoder_proj.out_features)
        enc = torch.randn(1, c, j, generator=torch.Generator().manual_seed(1))
        valid = torch.tensor([c])

        def greedy(variant: str) -> Callable[[], Any]:
            comp = _PartHead(
                runner,
                names["predictor"],
                names[f"joiner_{variant}"],
                int(model.blank_id),
                int(model.predictor.context_size),
            )
            state = GreedyState.create(comp, 1)
            return lambda: greedy_advance(comp, enc, valid, state)

        steps = {
            "embed": call("embed"),
            "layer": call("layer"),
            "null": call("null"),
            "proj": call("proj"),
            "greedy_blank": greedy("blank"),
            "greedy_emit": greedy("emit"),
        }
        t = round_medians(steps, self.repeats)
        null = t["null"]
        s = self.symbols_per_frame
        ms = {
            "embed": t["embed"],
            "layer": max(0.0, t["layer"] - null),
            "head": max(0.0, t["proj"] - null)
            + t["greedy_blank"]
            + s * (t["greedy_emit"] - t["greedy_blank"]),
        }
        if "embed" in parts:  # details only for the entries this call fills
            self._detail(keys, "embed", {"embed_call": t["embed"]})
        if "layer" in parts:
            self._detail(keys, "layer", {"layer_call": t["layer"], "null_call": null})
        if "head" in parts:
            self._detail(
                keys,
                "head",
                {
                    "proj_call": t["proj"],
                    "null_call": null,
                    "greedy_blank": t["greedy_blank"],
                    "greedy_emit": t["greedy_emit"],
                },
            )
        return {p: ms[p] for p in parts}

    def _detail(self, keys: dict[str, str] | None, part: str, d: dict[str, float]) -> None:
        if keys and part in keys:
            self.details[keys[part]] = {k: round(v, 5) for k, v in d.items()}
