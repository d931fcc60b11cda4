"""int4 exports: grouped int4 weights with dynamic int8 activations (XNNPACK 8da4w) in the
``.pte`` and ``MatMulNBits`` in ONNX, with the learned group scales of a QAT model or (PTQ)
scales computed now.

- ``.pte``: torchao's ``Int8DynamicActivationIntxWeightConfig`` on the int4 linear layers (and
  per-channel int8 on an int4 model's 8-bit linear layers: 8da8w), the learned scales written
  into its weights (:func:`learned_w4a8_`, :func:`inject_group_scales`); layers whose
  ``in_features`` is not a multiple of the group size get their input zero-padded to a whole
  group (:class:`PaddedLinear`), matching QAT's ``int4_unaligned: pad``.
- ONNX: onnxruntime's ``MatMulNBitsQuantizer`` rewrites the graph; with learned scales its
  computed block scales and int4 data are replaced (:func:`onnx_int4_learned`), else kept
  (:func:`ptq_onnx_int4`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from asrq.quant.export import QuantArtifact, lower_to_pte, ort_optimized_op_counts
from asrq.quant.modules import LayerQParams, strip_fake_quant
from asrq.utils.io import atomic_path


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
