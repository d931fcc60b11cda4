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

int4 with learned scales: the QAT model's group scales ``(out, in / 32)`` are written into the
weights of torchao's 8da4w (``Int8DynamicActivationIntxWeightConfig``) layers before export
(:func:`export_executorch_8da4w` with ``learned=True``; int4 qdata recomputed from them); the
activations of 8da4w are quantized dynamically per token at run time, so learned activation
scales do not apply there; linear layers whose ``in_features`` is not a multiple of 32 get
their input zero-padded to a whole group (:class:`PaddedLinear`). ONNX int4: ``MatMulNBits``
(which pads the last block itself) with the learned group scales written in place of those
onnxruntime's quantizer computes (:func:`onnx_int4_learned`).

Post-training baselines: :func:`ptq_onnx_dynamic` (onnxruntime dynamic int8, MatMul only,
per-channel, ``reduce_range``), :func:`ptq_pt2e_static` (XNNPACKQuantizer static int8
calibrated on given inputs), :func:`ptq_onnx_int4` (``MatMulNBits``), and
:func:`export_executorch_8da4w` with ``learned=False``.
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
from asrq.quant.modules import LayerQParams, strip_fake_quant
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


def _apply_8da4w(module: nn.Module, group_size: int, names: set[str] | None = None) -> None:
    """torchao 8da4w on the linear layers named in ``names`` (None: every linear whose
    in_features divide by ``group_size``)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    quantize_(
        module,
        Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4, weight_granularity=PerGroup(group_size)
        ),
        filter_fn=lambda m, name: (
            isinstance(m, nn.Linear)
            and (name in names if names is not None else m.in_features % group_size == 0)
        ),
    )


def _apply_8da8w(module: nn.Module, names: set[str]) -> None:
    """torchao dynamic-int8-activation, per-channel int8-weight linear layers (XNNPACK
    ``qdint8 x qcint8``) for the ``nn.Linear`` layers named in ``names``: the 8-bit layers of
    an int4 QAT model (e.g. the joiner's output layer), which 8da4w would leave float."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    if not names:
        return
    quantize_(
        module,
        Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int8, weight_granularity=PerAxis(0)
        ),
        filter_fn=lambda m, name: isinstance(m, nn.Linear) and name in names,
    )


def learned_w4a8_(module: nn.Module, table: dict[str, LayerQParams], group_size: int) -> int:
    """In place, on a float module (fake quantizers stripped) and its learned table: the int4
    layers become 8da4w (inputs padded to whole groups where needed) and the 8-bit linear
    layers 8da8w, both with their learned weight scales (:func:`inject_group_scales`); returns
    the layers changed."""
    grouped = {n: q for n, q in table.items() if q.group_size}
    renamed = pad_unaligned_linears(module, group_size, set(grouped))
    grouped = {renamed.get(n, n): q for n, q in grouped.items()}
    channel = {
        n: q
        for n, q in table.items()
        if not q.group_size and isinstance(module.get_submodule(n), nn.Linear)
    }
    learned = {**grouped, **channel}
    floats = {n: module.get_submodule(n).weight.detach().clone() for n in learned}
    _apply_8da4w(module, group_size, set(grouped))
    _apply_8da8w(module, set(channel))
    return inject_group_scales(module, learned, floats)


class PaddedLinear(nn.Module):
    """A linear layer whose input is zero-padded to ``in + pad`` columns (its weight too), so
    that XNNPACK's 8da4w, which groups only whole multiples of 32 input channels, can take a
    144-wide layer: ``linear(pad(x)) == original(x)`` (the padded columns are zero)."""

    def __init__(self, layer: nn.Linear, multiple: int) -> None:
        super().__init__()
        self.pad = -layer.in_features % multiple
        self.linear = nn.Linear(
            layer.in_features + self.pad, layer.out_features, bias=layer.bias is not None
        )
        with torch.no_grad():
            self.linear.weight.copy_(nn.functional.pad(layer.weight.detach(), (0, self.pad)))
            if layer.bias is not None:
                self.linear.bias.copy_(layer.bias.detach())

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        return self.linear(nn.functional.pad(x, (0, self.pad)))


def pad_unaligned_linears(
    module: nn.Module, group_size: int, names: set[str] | None = None
) -> dict[str, str]:
    """In place: every ``nn.Linear`` named in ``names`` (None: every one) whose
    ``in_features`` is not a multiple of ``group_size`` becomes a :class:`PaddedLinear`;
    returns ``{old name: name of its inner linear}`` for the layers changed."""
    renamed = {}
    for name, mod in list(module.named_modules()):
        if not isinstance(mod, nn.Linear) or mod.in_features % group_size == 0:
            continue
        if names is not None and name not in names:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(
            module.get_submodule(parent) if parent else module, leaf, PaddedLinear(mod, group_size)
        )
        renamed[name] = f"{name}.linear"
    return renamed


@torch.no_grad()
def inject_group_scales(
    module: nn.Module, table: dict[str, LayerQParams], float_weights: dict[str, Tensor]
) -> int:
    """Overwrite the scales and integer data of torchao 8da4w / 8da8w weights
    (``IntxUnpackedToInt8Tensor``: ``qdata`` (out, in) int8, ``scale`` / ``zero_point`` (out,
    in / G) or (out, 1)) with the learned scales of ``table`` and ``round(w / s)`` of the float
    weights; returns the layers changed."""
    n = 0
    for name, mod in module.named_modules():
        q = table.get(name)
        if q is None or not isinstance(mod, nn.Linear) or name not in float_weights:
            continue
        w = mod.weight
        if not all(hasattr(w, a) for a in ("qdata", "scale", "zero_point")):
            raise RuntimeError(
                f"{name}: torchao weight {type(w).__name__} has no qdata/scale/zero_point to "
                "inject learned scales into"
            )
        s = q.weight_scale.to(w.scale.dtype)  # (out, in / G)
        if tuple(s.shape) != tuple(w.scale.shape):
            raise RuntimeError(
                f"{name}: learned scales {tuple(s.shape)} vs torchao's {tuple(w.scale.shape)}"
            )
        fw = float_weights[name]
        rows = fw.reshape(fw.shape[0], s.shape[1], -1)
        qdata = torch.clamp(torch.round(rows / s[..., None]), -q.weight_qmax, q.weight_qmax)
        w.qdata.copy_(qdata.reshape(w.qdata.shape).to(w.qdata.dtype))
        w.scale.copy_(s)
        w.zero_point.zero_()
        n += 1
    return n


def export_executorch_8da4w(
    module: nn.Module,
    example_inputs: tuple[Tensor, ...],
    dynamic_shapes: Any,
    path: str | Path,
    group_size: int = 32,
    learned: bool = True,
    constant_methods: dict[str, Any] | None = None,
) -> QuantArtifact:
    """int4 grouped weights (``qbint4``) with dynamic int8 activations (XNNPACK 8da4w).

    ``learned``: ``module`` is fake-quantized (int4 layers with ``group_size``): its learned
    group scales replace torchao's (:func:`learned_w4a8_`); its 8-bit linear layers become
    dynamic-activation int8 (8da8w) with their learned per-channel scales; convolutions and
    float layers stay float (8da4w / 8da8w cover linear layers only).
    Otherwise ``module`` is a float module and torchao computes the scales (PTQ).
    Layers whose ``in_features`` is not a multiple of ``group_size`` are padded
    (:func:`pad_unaligned_linears`)."""
    m = copy.deepcopy(module).eval()
    if learned:
        m, table = strip_fake_quant(m)
        if not any(q.group_size for q in table.values()):
            raise ValueError("export_executorch_8da4w(learned=True): the module has no int4 layer")
        learned_w4a8_(m, table, group_size)
    else:
        pad_unaligned_linears(m, group_size)
        _apply_8da4w(m, group_size)
    return lower_to_pte(
        m,
        example_inputs,
        dynamic_shapes,
        path,
        "w4a8-learned" if learned else "w4a8-ptq",
        constant_methods,
    )


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


def ptq_onnx_int4(fp32_path: str | Path, path: str | Path, block_size: int = 32) -> QuantArtifact:
    """onnxruntime int4 weight-only ``MatMulNBits`` (symmetric, blocks of ``block_size``)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(
        onnx.load(str(fp32_path)), bits=4, block_size=block_size, is_symmetric=True
    )
    q.process()
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(q.model.model, str(tmp))
    return QuantArtifact(
        path, path.stat().st_size, "int4-weight", ort_ops=ort_optimized_op_counts(path)
    )


def pack_int4_blocks(w: Tensor, scale: Tensor, qmax: int, block_size: int) -> tuple[Any, Any]:
    """A weight ``(N, K)`` on a learned grid and its group step sizes ``(N, ceil(K / B))`` ->
    onnxruntime ``MatMulNBits`` initializers (symmetric, no zero-point input, so the runtime's
    zero point is 8): ``B`` uint8 ``(N, blocks, B / 2)`` holding ``round(w / s) + 8``, two
    per byte, the lower ``k`` in the low nibble, the last block zero-padded; ``scales`` float32
    ``(N, blocks)``."""
    import numpy as np

    n, k = w.shape
    blocks = -(-k // block_size)
    if tuple(scale.shape) != (n, blocks):
        raise ValueError(f"group scales {tuple(scale.shape)} do not fit a ({n}, {k}) weight")
    wp = nn.functional.pad(w.detach().float(), (0, blocks * block_size - k))
    rows = wp.reshape(n, blocks, block_size)
    q = torch.clamp(torch.round(rows / scale.float()[..., None]), -qmax, qmax).to(torch.int64)
    u = (q + 8).numpy().astype(np.uint8)  # (N, blocks, B)
    packed = (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)
    return packed, scale.detach().float().numpy().astype(np.float32)


def onnx_int4_learned(
    fp32_path: str | Path,
    path: str | Path,
    layers: Iterable[tuple[Tensor, Tensor, int]],
    block_size: int = 32,
) -> QuantArtifact:
    """int4 ``MatMulNBits`` with learned group step sizes. ``fp32_path``: the ONNX export of a
    model whose int4 layers hold their fake-quantized weights; ``layers``: ``(weight (N, K),
    group scales (N, ceil(K / block_size)), qmax)`` of those layers. Each ``MatMul`` whose
    constant ``B (K, N)`` equals a layer's ``weight.T`` becomes ``MatMulNBits`` with
    :func:`pack_int4_blocks` of the learned scales (the graph rewrite is onnxruntime's
    ``MatMulNBitsQuantizer``; its computed block scales and data are replaced); every other
    ``MatMul`` stays float, as in the reference model."""
    import hashlib

    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    def key(a: Any) -> tuple[Any, ...]:
        return (a.shape, hashlib.sha1(a.astype("float32").tobytes()).hexdigest())

    by_key = {}
    for w, scale, qmax in layers:
        wt = w.detach().float().t().contiguous().numpy()  # (K, N), as ONNX stores B
        by_key[key(wt)] = (w, scale, qmax)
    model = onnx.load(str(fp32_path))
    inits = {i.name: i for i in model.graph.initializer}
    learned: dict[str, tuple[Tensor, Tensor, int]] = {}
    exclude = []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        b = inits.get(node.input[1])
        hit = by_key.get(key(numpy_helper.to_array(b))) if b is not None else None
        if hit is None:
            exclude.append(node.name)
        else:
            learned[b.name] = hit
    out = model  # a program without int4 layers (e.g. a predictor of float / 8-bit layers)
    if learned:
        q = MatMulNBitsQuantizer(
            model, bits=4, block_size=block_size, is_symmetric=True, nodes_to_exclude=exclude
        )
        q.process()
        out = q.model.model
    replaced = 0
    for init in out.graph.initializer:
        base, _, suffix = init.name.rpartition("_")
        if base not in learned or suffix not in ("Q4", "scales"):
            continue
        w, scale, qmax = learned[base]
        packed, scales = pack_int4_blocks(w, scale, qmax, block_size)
        new = packed if suffix == "Q4" else scales
        old = numpy_helper.to_array(init)
        if old.shape != new.shape:
            raise RuntimeError(f"{init.name}: onnxruntime wrote {old.shape}, learned {new.shape}")
        init.CopyFrom(numpy_helper.from_array(new.astype(old.dtype), init.name))
        replaced += 1
    if replaced != 2 * len(learned):
        raise RuntimeError(
            f"{fp32_path}: replaced {replaced} MatMulNBits initializers, expected "
            f"{2 * len(learned)} (onnxruntime's naming changed?)"
        )
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(out, str(tmp))
    return QuantArtifact(
        path, path.stat().st_size, "int4-learned", ort_ops=ort_optimized_op_counts(path)
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
