"""Quantized exports: ExecuTorch ``.pte`` (XNNPACK) and ONNX (QDQ) programs that carry the scales
QAT learned, and post-training baselines from fp32 modules.

Learned int8 (weights per-channel symmetric, activations per-tensor affine; asrq.quant.pt2e)::

    fake-quant module -> convert_learned (strip, torch.export, prepare_pt2e with the learned
    qparams, convert_pt2e)  -> torch.export -> to_edge_transform_and_lower(XnnpackPartitioner)
                            -> .pte
                            -> torch.onnx.export(dynamo=True) -> QDQ .onnx

Checks on the results: :func:`xnnpack_delegate_summary` decodes each XNNPACK delegate's
flatbuffer (the graph XNNPACK runs) and counts its nodes by (op, input / weight / output
datatype), e.g. ``XNNFullyConnected qint8 x qcint8 -> fp32``; :func:`ort_optimized_op_counts`
lets onnxruntime optimize a model and counts the node types it produced (e.g.
``MatMulIntegerToFloat``).

int4 (8da4w ``.pte``, ``MatMulNBits`` ONNX, learned or PTQ scales): :mod:`asrq.quant.int4`.

Post-training baselines: :func:`ptq_onnx_dynamic` (onnxruntime dynamic int8, MatMul only,
per-channel, ``reduce_range``), :func:`ptq_pt2e_static` (XNNPACKQuantizer static int8
calibrated on given inputs), :func:`asrq.quant.int4.ptq_onnx_int4` (``MatMulNBits``), and
:func:`asrq.quant.int4.export_executorch_8da4w` with ``learned=False``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from asrq.export.parity import sqnr_db  # noqa: F401  (re-exported: tests and callers use it here)
from asrq.quant.modules import LayerQParams
from asrq.quant.pt2e import convert_learned
from asrq.utils.io import atomic_path


@dataclass
class QuantArtifact:
    """One written quantized program."""

    path: Path
    bytes: int
    scheme: (
        str  # int8-learned | int8-ptq-static | int8-dynamic | w4a8-learned | w4a8-ptq | int4-weight
    )
    #: ExecuTorch: XNNPACK delegate nodes by "op in x weight -> out" datatypes, ops left outside
    delegate_nodes: dict[str, int] = field(default_factory=dict)
    portable_ops: dict[str, int] = field(default_factory=dict)
    #: ONNX: node types after onnxruntime's optimizer
    ort_ops: dict[str, int] = field(default_factory=dict)
    #: ExecuTorch: the quantization parameters inside the delegates (xnnpack_quant_params)
    qparams: dict[str, list[Any]] = field(default_factory=dict)
    #: ExecuTorch: the planned upper bound of input ``x``'s axis 1 (bounded dynamic shapes)
    max_fbank_frames: int | None = None


def positional_dynamic_shapes(dynamic_shapes: Any, num_inputs: int) -> Any:
    """A ``{arg name: shapes}`` dict as a tuple, one entry per flat input (varargs such as the
    streaming encoder's ``states`` expanded): a converted PT2E graph names its inputs
    ``states_0, states_1, ...``, so the names of the original ``forward`` no longer match."""
    if not isinstance(dynamic_shapes, dict):
        return dynamic_shapes
    flat: list[Any] = []
    for v in dynamic_shapes.values():
        if isinstance(v, tuple) and all(e is None or isinstance(e, dict) for e in v):
            flat.extend(v)
        else:
            flat.append(v)
    return tuple(flat) if len(flat) == num_inputs else dynamic_shapes


# --------------------------------------------------------------------------------------------
# ExecuTorch
# --------------------------------------------------------------------------------------------
def lower_to_pte(
    gm: nn.Module,
    example_inputs: tuple[Tensor, ...],
    dynamic_shapes: Any,
    path: str | Path,
    scheme: str,
    constant_methods: dict[str, Any] | None = None,
) -> QuantArtifact:
    """torch.export ``gm`` (a converted PT2E graph or a torchao-quantized module), lower to
    XNNPACK, serialize to ``path`` atomically."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from asrq.export.executorch_export import _upper_bound_of_time_axis, delegation_summary

    dynamic_shapes = positional_dynamic_shapes(dynamic_shapes, len(example_inputs))
    with torch.no_grad():
        ep = torch.export.export(gm, example_inputs, dynamic_shapes=dynamic_shapes, strict=False)
    try:
        max_frames = _upper_bound_of_time_axis(ep)
    except (StopIteration, KeyError, ValueError, TypeError):  # no dynamic input x
        max_frames = None
    edge = to_edge_transform_and_lower(
        ep, partitioner=[XnnpackPartitioner()], constant_methods=constant_methods
    )
    _, portable = delegation_summary(edge)
    graphs = xnnpack_delegate_graphs(edge)
    nodes = xnnpack_delegate_summary(graphs)
    et = edge.to_executorch()
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(et.buffer)
    return QuantArtifact(
        path,
        path.stat().st_size,
        scheme,
        nodes,
        portable,
        qparams=xnnpack_quant_params(graphs),
        max_fbank_frames=max_frames,
    )


def xnnpack_delegate_graphs(edge: Any) -> list[dict[str, Any]]:
    """The XNNPACK graph of every delegate of an ``EdgeProgramManager``, decoded from the
    serialized flatbuffer (what the runtime executes) to JSON with ExecuTorch's ``flatc``."""
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import (
        XNNHeader,
        _get_schema_bytes,
    )
    from executorch.exir._serialize._flatbuffer import _flatc_decompile
    from executorch.exir.lowered_backend_module import LoweredBackendModule

    graphs = []
    for mod in edge.exported_program().graph_module.modules():
        if not isinstance(mod, LoweredBackendModule):
            continue
        data = mod.processed_bytes
        h = XNNHeader.from_bytes(data[: XNNHeader.EXPECTED_LENGTH])
        fb = data[h.flatbuffer_offset : h.flatbuffer_offset + h.flatbuffer_size]
        with tempfile.TemporaryDirectory() as d:
            Path(d, "schema.fbs").write_bytes(_get_schema_bytes())
            Path(d, "g.bin").write_bytes(fb)
            _flatc_decompile(d, os.path.join(d, "schema.fbs"), os.path.join(d, "g.bin"))
            # flatc writes non-finite floats (e.g. clamp bounds) as bare inf / nan
            text = re.sub(
                r"(?<=[\s:\[,])(-?)(inf|nan)\b",
                lambda m: {"inf": m.group(1) + "Infinity", "nan": "NaN"}[m.group(2)],
                Path(d, "g.json").read_text(),
            )
            graph = json.loads(text)
        # constants (weights, per-channel scales) live in the program's named data, by key
        store = getattr(mod, "_named_data_store_output", None)
        named = {}
        if store is not None:
            for key, entry in store.pte_data.items():
                named[key] = bytes(store.buffers[entry.buffer_index])
        graph["_named_data"] = named
        graphs.append(graph)
    return graphs


def _values(graph: dict[str, Any]) -> dict[int, dict[str, Any]]:
    out = {}
    for v in graph.get("xvalues", []):
        u = v["xvalue_union"]
        tv = u.get("tensor_value", u)
        out[tv["id_out"]] = {
            "datatype": tv["datatype"].replace("xnn_datatype_", ""),
            "quant": u.get("quant_params"),
            "quant_type": u.get("quant_params_type"),
        }
    return out


def xnnpack_delegate_summary(graphs: list[dict[str, Any]]) -> dict[str, int]:
    """Nodes of decoded XNNPACK graphs counted by op and the datatypes of the first input, the
    weight (filter, if any) and the output, e.g. ``{"XNNFullyConnected qint8 x qcint8 ->
    qint8": 12}``."""
    counts: Counter[str] = Counter()
    for graph in graphs:
        vals = _values(graph)
        for n in graph.get("xnodes", []):
            u = n["xnode_union"]
            first = u.get("input1_id", u.get("input_id"))
            parts = [vals.get(first, {}).get("datatype", "?")]
            if "filter_id" in u:
                parts.append(vals.get(u["filter_id"], {}).get("datatype", "?"))
            out = vals.get(u.get("output_id"), {}).get("datatype", "?")
            counts[f"{n['xnode_union_type']} {' x '.join(parts)} -> {out}"] += 1
    return dict(sorted(counts.items()))


def xnnpack_quant_params(graphs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The quantization parameters stored in decoded XNNPACK graphs: ``per_tensor`` (scale,
    zero point) pairs of qint8 values (scales as ``flatc`` prints them: 6 decimals)
    and ``per_channel`` fp32 scale lists of qcint8 weights (exact: read from the named constant
    data ``scale_buffer_idx`` points to); ``per_group``: the params of blockwise (int4) weights
    with their ``scale`` list read the same way (stored as bf16 or fp32)."""
    import numpy as np

    out: dict[str, list[Any]] = {"per_tensor": [], "per_channel": [], "per_group": []}
    for graph in graphs:
        consts = graph.get("constant_data", [])
        named = graph.get("_named_data", {})
        for v in _values(graph).values():
            q, kind = v["quant"], v["quant_type"]
            if not q:
                continue
            if kind == "PerTensorQuant":
                out["per_tensor"].append((q["scale"], q["zero_point"]))
            elif kind == "PerChannelQuant":
                scales = q.get("scale") or []
                idx = q.get("scale_buffer_idx", 0)
                if not scales and idx and consts[idx]["named_key"] in named:
                    raw = named[consts[idx]["named_key"]]
                    scales = np.frombuffer(raw, dtype=np.float32)[: q["num_scales"]].tolist()
                out["per_channel"].append(scales)
            elif kind == "PerChannelGroupQuant":  # scales in named data: bf16 or fp32
                idx, n = q.get("scale_buffer_idx", 0), q["num_scales"]
                scales = q.get("scale") or []
                if not scales and idx and consts[idx]["named_key"] in named:
                    raw = named[consts[idx]["named_key"]]
                    if len(raw) >= 4 * n:
                        scales = np.frombuffer(raw, dtype=np.float32)[:n].tolist()
                    else:  # bfloat16: the high half of a float32
                        bits = np.frombuffer(raw, dtype=np.uint16)[:n].astype(np.uint32) << 16
                        scales = bits.view(np.float32).tolist()
                out["per_group"].append({**q, "scale": scales})
    return out


def export_executorch_int8(
    module: nn.Module,
    example_inputs: tuple[Tensor, ...],
    dynamic_shapes: Any,
    path: str | Path,
    constant_methods: dict[str, Any] | None = None,
) -> tuple[QuantArtifact, dict[str, LayerQParams]]:
    """A fake-quantized module -> ``.pte`` with its learned int8 scales (XNNPACK). ``module``
    should already be XNNPACK-friendly (``asrq.export.wrappers.for_target(spec,
    "executorch")``). Returns the artifact and the learned-parameter table."""
    converted, table = convert_learned(module, example_inputs, dynamic_shapes)
    art = lower_to_pte(
        converted, example_inputs, dynamic_shapes, path, "int8-learned", constant_methods
    )
    return art, table


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------
def onnx_from_graph(
    gm: nn.Module,
    example_inputs: tuple[Tensor, ...],
    dynamic_shapes: Any,
    input_names: list[str],
    output_names: list[str],
    path: str | Path,
    scheme: str,
    meta: dict[str, Any] | None = None,
    opset: int = 18,
) -> QuantArtifact:
    """``torch.onnx.export(dynamo=True)`` of a (converted) module, written atomically; counts the
    node types onnxruntime's optimizer leaves."""
    import onnx

    from asrq.export.onnx_export import cast_bool_where, save_onnx_program

    dynamic_shapes = positional_dynamic_shapes(dynamic_shapes, len(example_inputs))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            gm,
            example_inputs,
            f=None,
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            verbose=False,
        )
    cast_bool_where(program.model)
    path = save_onnx_program(program, path, {**(meta or {}), "quant_scheme": scheme})
    model = onnx.load(str(path))
    if unique_dequantize(model):
        with atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
    onnx.checker.check_model(str(path))
    return QuantArtifact(path, path.stat().st_size, scheme, ort_ops=ort_optimized_op_counts(path))


def unique_dequantize(model: Any) -> int:
    """Give every consumer of a shared ``DequantizeLinear`` its own copy (in place, an ONNX
    ``ModelProto``); returns the copies made. PT2E shares one Q/DQ pair between the layers that
    read one tensor with equal scales (a calibrated ``attn.q`` and ``attn.kv``), and
    onnxruntime fuses ``DQ -> MatMul`` into ``MatMulIntegerToFloat`` only where the DQ has a
    single consumer (measured: 16 of the d=144 encoder's 74 linear layers left as float
    ``MatMul`` with their weights dequantized every chunk)."""
    graph = model.graph
    users: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            users.setdefault(name, []).append(n)
    nodes, made = [], 0
    for n in graph.node:
        nodes.append(n)
        if n.op_type != "DequantizeLinear" or len(users.get(n.output[0], [])) < 2:
            continue
        for k, user in enumerate(users[n.output[0]][1:], start=1):
            dup = copy.deepcopy(n)
            dup.name = f"{n.name}_dup{k}"
            dup.output[0] = f"{n.output[0]}_dup{k}"
            for i, name in enumerate(user.input):
                if name == n.output[0]:
                    user.input[i] = dup.output[0]
            nodes.append(dup)
            made += 1
    if made:
        del graph.node[:]
        graph.node.extend(nodes)
    return made


def export_onnx_int8(
    module: nn.Module,
    example_inputs: tuple[Tensor, ...],
    dynamic_shapes: Any,
    input_names: list[str],
    output_names: list[str],
    path: str | Path,
    meta: dict[str, Any] | None = None,
) -> tuple[QuantArtifact, dict[str, LayerQParams]]:
    """A fake-quantized module -> QDQ ONNX with the learned scales. Use 7-bit weights
    (``weight_qmax: 63``) when onnxruntime on x86 without VNNI is a target (its u8s8 kernels
    lose accuracy at full 8 bits: notes/quantization.md)."""
    converted, table = convert_learned(module, example_inputs, dynamic_shapes)
    art = onnx_from_graph(
        converted,
        example_inputs,
        dynamic_shapes,
        input_names,
        output_names,
        path,
        "int8-learned",
        meta,
    )
    return art, table


def ort_optimized_op_counts(path: str | Path) -> dict[str, int]:
    """Node types of ``path`` after onnxruntime's full optimization (ORT_ENABLE_ALL)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = os.path.join(d, "opt.onnx")
        opts.log_severity_level = 3  # its warning that the saved graph is host-specific: we count
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        model = onnx.load(opts.optimized_model_filepath)
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def onnx_initializer_scales(path: str | Path) -> dict[str, list[Any]]:
    """The scale initializers of every ``DequantizeLinear`` feeding a ``MatMul`` / ``Gemm`` /
    ``Conv`` input (by consumer node name), as numpy arrays: what the QDQ file carries."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consts = {}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    values = {**inits, **consts}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    out: dict[str, list[Any]] = {}
    for n in model.graph.node:
        if n.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        for inp in n.input:
            src = dq.get(inp)
            if src is None:
                # a Transpose between the weight DQ and a MatMul
                prod = next((m for m in model.graph.node if inp in m.output), None)
                if prod is not None and prod.op_type == "Transpose":
                    src = dq.get(prod.input[0])
            if src is not None and src.input[1] in values:
                out.setdefault(n.name, []).append(values[src.input[1]])
    return out


# --------------------------------------------------------------------------------------------
# Post-training baselines
# --------------------------------------------------------------------------------------------
def ptq_onnx_dynamic(fp32_path: str | Path, path: str | Path) -> QuantArtifact:
    """onnxruntime dynamic int8: MatMul only (its ConvInteger is 3.7x slower than fp32 here),
    per-channel weights, ``reduce_range`` (7-bit weights; the u8s8 kernels on x86 need it)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    # the exporter's stored value_info can disagree with onnx's own shape inference (a tiny
    # joiner: 64 vs 48 on a MatMul output), which quantize_dynamic re-runs: drop it first
    model = onnx.load(str(fp32_path))
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory(prefix="asrq-ort-dyn-") as td, atomic_path(path) as tmp:
        src = Path(td) / "fp32.onnx"
        onnx.save(model, str(src))
        quantize_dynamic(
            str(src),
            str(tmp),
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            reduce_range=True,
            weight_type=QuantType.QInt8,
        )
    return QuantArtifact(
        path, path.stat().st_size, "int8-dynamic", ort_ops=ort_optimized_op_counts(path)
    )


def ptq_pt2e_static(
    module: nn.Module,
    example_inputs: tuple[Tensor, ...],
    dynamic_shapes: Any,
    calibration: Iterable[tuple[Tensor, ...]],
) -> torch.fx.GraphModule:
    """XNNPACKQuantizer static int8 (per-channel symmetric weights, per-tensor affine
    activations) calibrated on ``calibration`` input tuples -> converted PT2E graph (feed it to
    :func:`lower_to_pte` or :func:`onnx_from_graph`)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)
    )
    with torch.no_grad():
        ep = torch.export.export(
            copy.deepcopy(module).eval(),
            example_inputs,
            dynamic_shapes=dynamic_shapes,
            strict=False,
        )
        prepared = prepare_pt2e(ep.module(), quantizer)
        for inputs in calibration:
            prepared(*inputs)
        return convert_pt2e(prepared, fold_quantize=True)


def ptq_pt2e_dynamic(
    module: nn.Module, example_inputs: tuple[Tensor, ...], dynamic_shapes: Any
) -> torch.fx.GraphModule:
    """XNNPACKQuantizer dynamic int8 on the ``nn.Linear`` layers (per-channel symmetric int8
    weights, activations quantized per call at run time; no calibration) -> converted PT2E
    graph for :func:`lower_to_pte`. Only ``nn.Linear`` modules: the constant-weight ``F.linear``
    of ``DecomposedLayerNorm`` stays float."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_module_type(
        nn.Linear, get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    )
    with torch.no_grad():
        ep = torch.export.export(
            copy.deepcopy(module).eval(),
            example_inputs,
            dynamic_shapes=dynamic_shapes,
            strict=False,
        )
        prepared = prepare_pt2e(ep.module(), quantizer)
        prepared(*example_inputs)
        gm = convert_pt2e(prepared, fold_quantize=True)
        expected = [t.dtype for t in _as_tuple(module(*example_inputs))]
        return restore_output_dtypes(
            gm, expected, [t.dtype for t in _as_tuple(gm(*example_inputs))]
        )


def _as_tuple(out: Any) -> tuple[Any, ...]:
    return tuple(out) if isinstance(out, tuple | list) else (out,)


def restore_output_dtypes(
    gm: torch.fx.GraphModule, expected: list[torch.dtype], actual: list[torch.dtype]
) -> torch.fx.GraphModule:
    """Cast the outputs of ``gm`` whose dtype (``actual``, measured by running it) differs from
    the float module's (``expected``). Measured: the dynamic-int8 conversion of the streaming
    encoder returned its int64 ``processed`` counter as float32 (the ExecuTorch program then
    refused it back as an input)."""
    if expected == actual:
        return gm
    out = next(n for n in gm.graph.nodes if n.op == "output")
    vals = list(_as_tuple(out.args[0]))
    with gm.graph.inserting_before(out):
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            if e != a:
                vals[i] = gm.graph.call_function(
                    torch.ops.aten._to_copy.default, (vals[i],), {"dtype": e}
                )
    out.args = (tuple(vals) if isinstance(out.args[0], tuple | list) else vals[0],)
    gm.recompile()
    return gm
