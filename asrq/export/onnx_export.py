"""ONNX export of one :class:`~asrq.export.spec.ProgramSpec`.

``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based exporter; it needs onnxscript)
keeps the dynamic axes symbolic; the legacy TorchScript exporter baked the time length into a
Reshape. The export's metadata goes into the model's ``metadata_props`` (string values; dicts as
JSON), as icefall's ``export-onnx.py`` does, so a runtime needs nothing but the file.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asrq.export.spec import ProgramSpec
from asrq.utils.io import atomic_path


@dataclass
class OnnxArtifact:
    name: str
    path: Path
    bytes: int
    seconds: float
    opset: int


def metadata_props(meta: dict[str, Any]) -> dict[str, str]:
    """Flatten metadata to ONNX ``metadata_props`` strings (dicts/lists as JSON, None as "")."""
    out = {}
    for k, v in meta.items():
        if isinstance(v, dict | list | tuple):
            out[k] = json.dumps(v, sort_keys=True)
        elif v is None:
            out[k] = ""
        else:
            out[k] = str(v)
    return out


def to_onnx_program(spec: ProgramSpec, opset: int = 18) -> Any:
    """Stage 1: capture + translate -> ``torch.onnx.ONNXProgram`` (in memory)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*axis name.*"
        )  # the exporter prints progress lines
        return torch.onnx.export(
            spec.module,
            spec.example_inputs,
            f=None,
            dynamo=True,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_shapes=spec.dynamic_shapes,
            opset_version=opset,
            verbose=False,
        )


def cast_bool_where(model: Any) -> int:
    """Stage 2: onnxruntime has no ``Where`` kernel for bool data (the chunk masks): compute
    those in uint8 and cast the result back. Rewrites the ``onnx_ir`` model in place; returns
    the number of nodes changed."""
    import onnx_ir as ir

    changed = 0
    for node in list(model.graph.all_nodes()):
        if (
            node.op_type != "Where"
            or node.domain not in ("", "ai.onnx")
            or node.outputs[0].dtype != ir.DataType.BOOL
        ):
            continue
        graph = node.graph
        casts = [ir.node("Cast", [node.inputs[i]], {"to": ir.DataType.UINT8}) for i in (1, 2)]
        graph.insert_before(node, casts)
        where = ir.node("Where", [node.inputs[0], casts[0].outputs[0], casts[1].outputs[0]])
        back = ir.node("Cast", [where.outputs[0]], {"to": ir.DataType.BOOL})
        graph.insert_after(node, [where, back])
        back.outputs[0].shape = node.outputs[0].shape
        back.outputs[0].dtype = ir.DataType.BOOL
        ir.convenience.replace_all_uses_with(
            node.outputs[0], back.outputs[0], replace_graph_outputs=True
        )
        graph.remove(node, safe=True)
        changed += 1
    return changed


def strip_node_metadata(model: Any) -> int:
    """Drop the exporter's per-node debug metadata (``pkg.torch.onnx.stack_trace``, ``fx_node``,
    ``namespace``, ``class_hierarchy``, ...) from an ``onnx_ir`` model, in place: ~0.55 MB of the
    mini fp32 streaming encoder's 17.4 MB and ~0.8 MB of its int8 QDQ form's 5.9 MB, nothing a
    runtime reads. Returns the number of entries removed."""
    removed = 0
    for node in model.graph.all_nodes():
        removed += len(node.metadata_props)
        node.metadata_props.clear()
    return removed


def _graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and every subgraph below it (``If`` / ``Loop`` / ``Scan`` bodies), protos."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def dedupe_initializers(model: Any, min_bytes: int = 1024) -> int:
    """Keep one copy of byte-identical initializers of at least ``min_bytes`` (an ONNX
    ``ModelProto``, in place) and point every reader at it; returns the copies removed.

    The exporter folds each attention layer's rotary ``cos`` / ``sin`` tables and ALiBi bias into
    constants of its own: 21 equal tensors, 210 KB of the d=144 streaming encoder (4% of its int8
    file). The graph is otherwise untouched, so onnxruntime builds the same kernels and computes
    the same numbers (``tests/test_export.py``). ``value_info`` stays: without it onnxruntime fuses
    one ``SkipLayerNormalization`` less in that encoder."""
    from onnx import numpy_helper

    graph = model.graph
    protected = {v.name for v in graph.input} | {v.name for v in graph.output}
    first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    rename: dict[str, str] = {}
    keep = []
    for init in graph.initializer:
        data = numpy_helper.to_array(init)
        key = (init.data_type, tuple(init.dims), data.tobytes())
        if data.nbytes >= min_bytes and init.name not in protected and key in first:
            rename[init.name] = first[key]
            continue
        first.setdefault(key, init.name)
        keep.append(init)
    if not rename:
        return 0
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for g in _graphs(graph):
        for node in g.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
    return len(rename)


def save_onnx_program(program: Any, path: str | Path, meta: dict[str, Any]) -> Path:
    """Stage 3: drop per-node debug metadata, attach ours, merge equal constants
    (:func:`dedupe_initializers`) and write atomically (weights inline: the models are < 2 GB)."""
    import onnx

    strip_node_metadata(program.model)
    program.model.metadata_props.update(metadata_props(meta))
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*")
        program.save(tmp, external_data=False)
        model = onnx.load(str(tmp))
        if dedupe_initializers(model):
            onnx.save(model, str(tmp))
    return path


def compact_onnx_file(path: str | Path) -> tuple[int, int, int]:
    """:func:`dedupe_initializers` on a written file (an export from before asrq merged them),
    rewritten atomically; returns ``(bytes before, bytes after, copies removed)``."""
    import onnx

    path = Path(path)
    before = path.stat().st_size
    model = onnx.load(str(path))
    removed = dedupe_initializers(model)
    if removed:
        with atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
    return before, path.stat().st_size, removed


def export_onnx(
    spec: ProgramSpec, path: str | Path, meta: dict[str, Any], opset: int = 18
) -> OnnxArtifact:
    """Export ``spec`` to ``path`` with ``meta`` in its metadata_props; checks the file with
    ``onnx.checker``."""
    import onnx

    t0 = time.perf_counter()
    program = to_onnx_program(spec, opset)
    cast_bool_where(program.model)
    path = save_onnx_program(program, path, {**meta, "program": spec.name})
    onnx.checker.check_model(str(path))
    return OnnxArtifact(spec.name, path, path.stat().st_size, time.perf_counter() - t0, opset)


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (without loading the weights into memory twice)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
