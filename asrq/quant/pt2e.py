"""PT2E conversion that keeps the learned quantization parameters (no fresh calibration).

Route (verified with torch 2.14.1 / torchao 0.18.0)::

    fake-quant module --strip_fake_quant--> float module + {layer: LayerQParams}
        --torch.export--> --prepare_pt2e(LearnedScalesQuantizer)--> --convert_pt2e-->
    a GraphModule with quantize/dequantize ops carrying the learned scales

:class:`LearnedScalesQuantizer` annotates every ``aten.linear`` / ``aten.conv1d`` /
``aten.conv2d`` node that comes from a layer in the table (``node.meta["nn_module_stack"]``
gives the layer's path): its input with a per-tensor affine int8 spec and its weight with a
per-channel symmetric int8 spec whose observers' ``calculate_qparams()`` return the learned
scale / zero point (:class:`LearnedPerTensorObserver`, :class:`LearnedPerChannelObserver`).
Outputs get their learned spec when the layer has an output quantizer (XNNPACK's static int8
GEMM needs it). The bias stays float (XNNPACK and onnxruntime take it so). Nodes from other
modules (e.g.
the constant-weight ``F.linear`` of ``DecomposedLayerNorm``) are left alone.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
from torch import Tensor, nn
from torchao.quantization.pt2e.observer import ObserverBase
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer import (
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
)

from asrq.quant.fake_quant import ACT_QMAX, ACT_QMIN
from asrq.quant.modules import LayerQParams, strip_fake_quant

aten = torch.ops.aten
QUANTIZABLE_OPS = (aten.linear.default, aten.conv1d.default, aten.conv2d.default)


class LearnedPerTensorObserver(ObserverBase):
    """An observer that observes nothing: ``calculate_qparams()`` returns the given (learned)
    scale and zero point."""

    def __init__(
        self,
        scale: float = 1.0,
        zero_point: int = 0,
        dtype: torch.dtype = torch.int8,
        quant_min: int = ACT_QMIN,
        quant_max: int = ACT_QMAX,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        **_: Any,
    ) -> None:
        super().__init__(dtype=dtype, is_dynamic=False)
        self.quant_min, self.quant_max, self.qscheme = quant_min, quant_max, qscheme
        self.register_buffer("scale", torch.tensor([float(scale)]))
        self.register_buffer("zero_point", torch.tensor([int(zero_point)], dtype=torch.int64))

    def forward(self, x: Tensor) -> Tensor:
        return x

    def calculate_qparams(self, **kwargs: Any) -> tuple[Tensor, Tensor]:
        return self.scale, self.zero_point


class LearnedPerChannelObserver(LearnedPerTensorObserver):
    """Per-channel (``ch_axis``) symmetric variant: ``scale`` ``(C,)``, zero points 0. (The name
    must contain ``PerChannel``: torchao's ``prepare`` passes ``ch_axis`` only to such classes.)"""

    def __init__(
        self,
        scale: Tensor | None = None,
        dtype: torch.dtype = torch.int8,
        quant_min: int = -127,
        quant_max: int = 127,
        qscheme: torch.qscheme = torch.per_channel_symmetric,
        ch_axis: int = 0,
        **_: Any,
    ) -> None:
        super().__init__(1.0, 0, dtype, quant_min, quant_max, qscheme)
        self.ch_axis = ch_axis
        self.scale = scale.detach().reshape(-1).clone().float()
        self.zero_point = torch.zeros(self.scale.numel(), dtype=torch.int64)


def module_path(node: torch.fx.Node) -> str | None:
    """The dotted path (``encoder.layers.0.ff1.w1``) of the innermost module a node came from."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\._modules\['([^']+)'\]", r".\1", path)
    return re.sub(r"\[(\d+)\]", r".\1", path).lstrip(".")


def act_spec(scale: float, zero_point: int) -> FixedQParamsQuantizationSpec:
    """A learned activation quantizer as a fixed-qparams spec. Not a ``QuantizationSpec`` with
    an observer: PT2E's implicit sharing unions the specs of one tensor's edges (its output and
    each consumer's input) when their dtype / range / qscheme / ``scale`` / ``zero_point``
    attributes agree, and a plain spec has no scale, so two consumers of one tensor (a
    Conformer's ``attn.q`` and ``attn.kv`` both read the LayerNorm output) got one quantizer,
    the other layer's learned scale lost (measured: the trained demo model's converted graph
    at 26 dB SQNR against its fake-quant model). Fixed qparams keep the scales apart."""
    return FixedQParamsQuantizationSpec(
        dtype=torch.int8,
        scale=float(scale),
        zero_point=int(zero_point),
        quant_min=ACT_QMIN,
        quant_max=ACT_QMAX,
        qscheme=torch.per_tensor_affine,
    )


def weight_spec(q: LayerQParams) -> QuantizationSpec:
    if q.group_size:
        raise NotImplementedError(
            "grouped (int4) weights have no PT2E per-group spec here; export int4 through "
            "asrq.quant.int4.export_executorch_8da4w / onnx_int4_learned"
        )
    return QuantizationSpec(
        dtype=torch.int8,
        quant_min=-q.weight_qmax,
        quant_max=q.weight_qmax,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
        observer_or_fake_quant_ctr=LearnedPerChannelObserver.with_args(scale=q.weight_scale),
    )


class LearnedScalesQuantizer(Quantizer):
    """Annotates linear / conv nodes of the layers in ``table`` with their learned qparams."""

    def __init__(self, table: dict[str, LayerQParams]) -> None:
        super().__init__()
        self.table = table
        self.annotated: dict[str, int] = {}  # layer path -> annotated nodes (a layer may run twice)

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        for node in model.graph.nodes:
            if node.op != "call_function" or node.target not in QUANTIZABLE_OPS:
                continue
            path = module_path(node)
            q = self.table.get(path) if path is not None else None
            if q is None:
                continue
            x, w = node.args[0], node.args[1]
            qspec: dict[torch.fx.Node, Any] = {w: weight_spec(q)}
            if q.act_scale is not None:
                qspec[x] = act_spec(q.act_scale, q.act_zero_point)
            out = None if q.out_scale is None else act_spec(q.out_scale, q.out_zero_point)
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map=qspec, output_qspec=out, _annotated=True
            )
            self.annotated[path] = self.annotated.get(path, 0) + 1
        return model

    def validate(self, model: torch.fx.GraphModule) -> None:
        # a program may hold layers it never calls (the joiner program skips the joiner's input
        # projections), but a table none of whose layers was found means the paths are wrong
        if self.table and not self.annotated:
            raise RuntimeError(
                "no quantized layer of the table matched a linear/conv node of the exported "
                f"graph (module paths like {sorted(self.table)[:3]})"
            )


def convert_learned(
    module: nn.Module,
    example_inputs: tuple[Tensor, ...],
    dynamic_shapes: Any = None,
) -> tuple[torch.fx.GraphModule, dict[str, LayerQParams]]:
    """A fake-quantized module (eval) -> (converted PT2E GraphModule with the learned q/dq
    parameters and int8 weights folded in, the learned parameters of the layers the graph
    uses). ``module`` is not changed (a deep copy is stripped)."""
    float_module, table = strip_fake_quant(copy.deepcopy(module).eval(), snap_weights=True)
    with torch.no_grad():
        ep = torch.export.export(
            float_module, example_inputs, dynamic_shapes=dynamic_shapes, strict=False
        )
        quantizer = LearnedScalesQuantizer(table)
        prepared = prepare_pt2e(ep.module(), quantizer)
        converted = convert_pt2e(prepared, fold_quantize=True)
    return converted, {k: v for k, v in table.items() if k in quantizer.annotated}


def graph_qparams(gm: torch.fx.GraphModule) -> dict[str, list[dict[str, Any]]]:
    """The quantize ops' parameters in a converted graph, by the layer path of the op they feed:
    ``{path: [{"kind": "act"|"weight", "scale": Tensor, "zero_point": ...}, ...]}``. Folded
    weights appear as ``dequantize_per_channel`` of an int8 constant."""
    qd = torch.ops.quantized_decomposed
    out: dict[str, list[dict[str, Any]]] = {}

    def const(arg: Any) -> Any:
        if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
            return (
                getattr(gm, arg.target)
                if "." not in arg.target
                else gm.get_submodule(arg.target.rsplit(".", 1)[0]).get_buffer(
                    arg.target.rsplit(".", 1)[1]
                )
            )
        return arg

    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in QUANTIZABLE_OPS:
            continue
        path = module_path(node)
        for i, kind in ((0, "act"), (1, "weight")):
            dq = node.args[i]
            if not isinstance(dq, torch.fx.Node) or dq.op != "call_function":
                continue
            if dq.target in (qd.dequantize_per_tensor.default, qd.dequantize_per_tensor.tensor):
                out.setdefault(path, []).append(
                    {
                        "kind": kind,
                        "scale": float(const(dq.args[1])),
                        "zero_point": int(const(dq.args[2])),
                    }
                )
            elif dq.target == qd.dequantize_per_channel.default:
                out.setdefault(path, []).append(
                    {
                        "kind": kind,
                        "scale": const(dq.args[1]),
                        "int": const(dq.args[0]),
                        "quant_min": dq.args[4],
                        "quant_max": dq.args[5],
                    }
                )
    return out
