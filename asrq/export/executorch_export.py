"""ExecuTorch export of one :class:`~asrq.export.spec.ProgramSpec`, as a straight line of
stages (ExecuTorch ``examples/xnnpack/aot_compiler.py``; STYLE.md point 9)::

    capture (torch.export)  ->  lower (edge dialect + XNNPACK delegate)  ->  serialize (.pte)

fp32 for now (int8 via the XNNPACK quantizer slots in between capture and lower). The module is
first rewritten by :func:`~asrq.export.rewrites.xnnpack_friendly` (LayerNorm as ops XNNPACK
takes). Small integer metadata travels inside the ``.pte`` as constant methods
(``vocab_size()``, ``blank_id()``, ...), the way ExecuTorch's LLM exports carry theirs.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from asrq.export.rewrites import xnnpack_friendly
from asrq.export.spec import ProgramSpec
from asrq.utils.io import atomic_path


@dataclass
class ExecutorchArtifact:
    name: str
    path: Path
    bytes: int
    seconds: dict[str, float]
    delegates: int
    #: ops left outside the XNNPACK delegate (portable kernels), by op name
    portable_ops: dict[str, int] = field(default_factory=dict)
    max_fbank_frames: int | None = None


def capture(spec: ProgramSpec) -> torch.export.ExportedProgram:
    """Stage 1: ``torch.export`` of the XNNPACK-friendly module with the spec's dynamic shapes."""
    module = xnnpack_friendly(spec.module).eval()
    with torch.no_grad():
        return torch.export.export(
            module, spec.example_inputs, dynamic_shapes=spec.dynamic_shapes, strict=False
        )


def lower(ep: torch.export.ExportedProgram, constant_methods: dict[str, Any] | None = None) -> Any:
    """Stage 2: edge dialect + XNNPACK partitioning -> ``EdgeProgramManager``."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    return to_edge_transform_and_lower(
        ep, partitioner=[XnnpackPartitioner()], constant_methods=constant_methods
    )


def serialize(edge: Any) -> Any:
    """Stage 3: ``to_executorch`` (memory planning) -> ``ExecutorchProgramManager``
    (``.buffer``)."""
    return edge.to_executorch()


def delegation_summary(edge: Any) -> tuple[int, dict[str, int]]:
    """(number of XNNPACK partitions, {op: count} of the ops left on portable kernels)."""
    delegates, portable = 0, Counter()
    for node in edge.exported_program().graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if name == "executorch_call_delegate":
            delegates += 1
        elif name != "getitem":
            portable[name] += 1
    return delegates, dict(sorted(portable.items()))


def export_executorch(
    spec: ProgramSpec, path: str | Path, constant_methods: dict[str, Any] | None = None
) -> ExecutorchArtifact:
    """Capture, lower and serialize ``spec`` to ``path`` (written atomically)."""
    seconds = {}
    t0 = time.perf_counter()
    ep = capture(spec)
    seconds["capture"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    edge = lower(ep, constant_methods)
    seconds["lower"] = time.perf_counter() - t0
    delegates, portable = delegation_summary(edge)
    t0 = time.perf_counter()
    et = serialize(edge)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(et.buffer)
    seconds["serialize"] = time.perf_counter() - t0
    seconds["total"] = sum(seconds.values())
    max_frames = None
    if spec.name == "encoder":
        max_frames = _upper_bound_of_time_axis(ep)
    return ExecutorchArtifact(
        spec.name, path, path.stat().st_size, seconds, delegates, portable, max_frames
    )


def _upper_bound_of_time_axis(ep: torch.export.ExportedProgram) -> int | None:
    """The planned maximum of the encoder's fbank axis (``x`` is the first user input)."""
    x = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == "x")
    t = x.meta["val"].shape[1]
    if isinstance(t, int):
        return t
    vr = ep.range_constraints.get(t.node.expr)
    if vr is not None:
        return int(vr.upper)
    # a derived dim (4 * steps + 3): bound it through its free symbol
    (sym,) = t.node.expr.free_symbols
    upper = int(ep.range_constraints[sym].upper)
    return int(t.node.expr.subs(sym, upper))
