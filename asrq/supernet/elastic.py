"""Running a subnet inside the supernet, and cutting it out as a plain model.

**The form: functional slicing.** A supernet is an ordinary model (``asrq.models.build_model``
of the largest config). The supernet's forward *at a spec* is defined as the forward of the
plain model of that spec (``build_model(subnet_model_config(cfg, spec))``) whose parameters
are slices of the supernet's parameters: :meth:`Supernet.active` builds that plain model once
per spec on the ``meta`` device (no memory, no init cost) as a *template*, and binds the sliced
tensors (differentiable views / gathers of the supernet's parameters) into it for the
duration of a ``with`` block. Gradients flow back into the supernet's parameters, so
several subnets' backward passes accumulate into one set of gradients.

:func:`slice_model` runs the same slicing once, copies the tensors into a freshly built plain
model and returns it with its config. Because the supernet at a spec *is* that plain model
running on those tensors, the two compute exactly the same thing (bit for bit on the same
device and threads): LayerNorms normalize over the subnet's ``d`` channels, the
subsampling's output projection, residual scales, rotary frequencies, ALiBi slopes, head
dims and streaming states are all the plain model's own. Inference needs no supernet code.

**What a subnet takes** (supernet widths D, F, H heads of width Dh = D / fold / H, H_s
MH-SSM heads of width P_s = D / H_s; subnet widths d, f, h, h_s):

- the first ``num_layers`` encoder layers; every other tensor is cut to the template's shape by
  taking the *first* entries of each axis (the first d model channels, the first f FFN
  channels, the first p predictor / j joiner channels, ...), except:
- attention ``q`` / ``kv`` rows and ``out`` columns: the first h heads, and inside supernet head
  ``i`` the first ``dh / 2`` channels of each rotary half (channels ``i Dh + [0, dh/2)`` and
  ``i Dh + Dh/2 + [0, dh/2)``), so rotary channel pairs stay pairs. The subnet's head dim
  ``dh = d / fold / h`` may be smaller than Dh, never larger (a subnet head is the front of a
  supernet head), and the subnet uses the plain model's rotary frequencies and ALiBi slopes for
  its own ``dh`` and ``h`` (so a head's rotary frequencies and ALiBi slope differ between
  subnets whose ``dh`` / ``h`` differ: the price of exactness with an unmodified plain model);
- the conv module's ``pw1`` (D -> 2D, then GLU): rows ``[0, d)`` and ``[D, D + d)``;
- MH-SSM ``in_proj`` (u | gate) rows and ``out`` columns: the first h_s heads, first
  ``p_s = d / h_s`` channels of each (``u`` and gate alike); ``A``, ``B``, ``C``, ``dt``,
  ``Dskip`` of the first h_s heads (``B`` / ``C`` / ``Dskip`` on their first p_s channels). The
  state size is not elastic.

Folding (``fold > 1``) works the same way: the subnet folds its d channels into sub-tokens of
``d / fold`` and its folded projections are the fronts of the supernet's (exact by the same
argument; the sub-token boundaries move with d). The ``ctc_attention`` head is not elastic
(:func:`asrq.supernet.spec.check_sliceable` rejects it).

**Quantization-aware supernets** (``Supernet(..., quant=QuantConfig)``, a supernet fine-tuned
with ``asrq qat train``): the supernet and every template are made fake-quantized with
:func:`asrq.quant.quantize_` (same config), so every subnet runs quantization-aware on sliced
step sizes. A per-channel weight step size ``<layer>.weight_fq.scale`` ``(out, 1)`` is cut with
its weight's rows (the same axis-0 index wherever ``<layer>.weight`` has one); grouped (int4)
step sizes ``(out, in / G)`` take, where the weight's input channels are indexed, the groups
those channels form, which must be whole aligned groups (else a clear error); activation step
sizes and zero points are per tensor and shared by every subnet.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from asrq.config import ModelConfig
from asrq.models import build_model
from asrq.models.conformer import (
    CausalConvModule,
    RotarySelfAttention,
    alibi_slopes,
    count_parameters,
)
from asrq.models.stateformer import MultiHeadSSM
from asrq.supernet.spec import SubnetSpec, subnet_model_config

Rule = tuple[Tensor | None, ...]  # per axis: an index tensor, or None for "the first entries"


def head_index(full_heads: int, full_dim: int, heads: int, dim: int, rotary: bool) -> Tensor:
    """Supernet channels of ``heads`` subnet heads of width ``dim`` cut from ``full_heads`` heads of
    width ``full_dim``: ``(heads * dim,)`` int64, subnet channel order. ``rotary``: the first
    ``dim / 2`` channels of each half of the head (rotary pairs ``(c, c + dim/2)``), else the
    first ``dim`` channels."""
    if heads > full_heads or dim > full_dim:
        raise ValueError(f"cannot cut {heads} heads of {dim} from {full_heads} heads of {full_dim}")
    per_head = torch.arange(dim)
    if rotary:
        half = dim // 2
        per_head = torch.cat([torch.arange(half), full_dim // 2 + torch.arange(half)])
    return (torch.arange(heads)[:, None] * full_dim + per_head[None, :]).reshape(-1)


def slicing_rules(template: nn.Module, cfg: ModelConfig) -> dict[str, Rule]:
    """The tensors of ``template`` (a plain model of a subnet of supernet ``cfg``) that are not
    cut by taking the first entries of every axis, with their per-axis index (module doc)."""
    e = cfg.encoder
    big_d = e.d_model
    rules: dict[str, Rule] = {}
    for name, mod in template.named_modules():
        pre = f"{name}." if name else ""
        if isinstance(mod, RotarySelfAttention):
            big_w = big_d // e.fold
            idx = head_index(e.num_heads, big_w // e.num_heads, mod.h, mod.dh, rotary=True)
            kv = torch.cat([idx, big_w + idx])
            rules.update(
                {
                    f"{pre}q.weight": (idx, None),
                    f"{pre}q.bias": (idx,),
                    f"{pre}kv.weight": (kv, None),
                    f"{pre}kv.bias": (kv,),
                    f"{pre}out.weight": (None, idx),
                }
            )
        elif isinstance(mod, CausalConvModule):
            d = mod.norm.normalized_shape[0]
            idx = torch.cat([torch.arange(d), big_d + torch.arange(d)])
            rules.update({f"{pre}pw1.weight": (idx, None), f"{pre}pw1.bias": (idx,)})
        elif isinstance(mod, MultiHeadSSM):
            idx = head_index(e.ssm_heads, big_d // e.ssm_heads, mod.h, mod.p, rotary=False)
            both = torch.cat([idx, big_d + idx])
            rules.update(
                {
                    f"{pre}in_proj.weight": (both, None),
                    f"{pre}in_proj.bias": (both,),
                    f"{pre}out.weight": (None, idx),
                }
            )
    return _quant_rules(template, rules)


def group_index(cols: Tensor, group_size: int, layer: str) -> Tensor:
    """The groups of ``group_size`` input channels that channel index ``cols`` consists of,
    in order; an :class:`~asrq.utils.io.AsrqError` unless ``cols`` is a sequence of whole,
    aligned groups (grouped step sizes cannot follow a finer index), the last of which may be
    a leading part of its group (a layer with ``quant.int4_unaligned: pad``: e.g. 144 of 192
    channels take groups 0-4, the fifth with 16 columns)."""
    from asrq.utils.io import AsrqError

    n = cols.numel()
    full = n - n % group_size
    c = cols[:full].reshape(-1, group_size)
    ok = bool(
        ((c[:, 0] % group_size == 0) & (c == c[:, :1] + torch.arange(group_size)).all(1)).all()
    )
    tail = cols[full:]
    if tail.numel():
        ok = ok and int(tail[0]) % group_size == 0
        ok = ok and bool((tail == tail[0] + torch.arange(tail.numel())).all())
    if not ok:
        raise AsrqError(
            f"quant: {layer}: its int4 step sizes are per group of {group_size} input channels, "
            "but the subnet takes its input channels by an index that splits groups (attention "
            "heads narrower than the supernet's); choose head widths that are multiples of "
            f"{group_size} or keep the layer 8-bit (quant.overrides weight_dtype: int8)"
        )
    groups = c[:, 0] // group_size
    if tail.numel():
        groups = torch.cat([groups, tail[:1] // group_size])
    return groups


def _quant_rules(template: nn.Module, rules: dict[str, Rule]) -> dict[str, Rule]:
    """The rules of fake-quantized layers' step sizes: a weight's axis-0 index also cuts its
    ``weight_fq.scale`` rows; an axis-1 index cuts grouped step sizes by whole groups."""
    for key, rule in list(rules.items()):
        layer, _, attr = key.rpartition(".")
        if attr != "weight":
            continue
        try:
            fq = template.get_submodule(f"{layer}.weight_fq")
        except AttributeError:
            continue
        rows = rule[0] if rule else None
        cols = rule[1] if len(rule) > 1 else None
        groups = (
            group_index(cols, fq.group_size, layer) if cols is not None and fq.group_size else None
        )
        if rows is not None or groups is not None:
            rules[f"{layer}.weight_fq.scale"] = (rows, groups)
    return rules


def quantized_template(model: nn.Module, quant: Any) -> nn.Module:
    """``model`` made fake-quantized with ``quant`` (a :class:`asrq.quant.QuantConfig`; None:
    unchanged), step sizes left for the state dict to fill."""
    if quant is None:
        return model
    from asrq.quant.modules import quantize_

    return quantize_(model, quant, init_scales=False)


def cut(t: Tensor, shape: torch.Size, rule: Rule | None) -> Tensor:
    """Cut supernet tensor ``t`` to ``shape``: per axis the rule's index, or the first entries."""
    for axis, size in enumerate(shape):
        idx = rule[axis] if rule is not None and axis < len(rule) else None
        if idx is not None:
            t = t.index_select(axis, idx)
        elif t.shape[axis] != size:
            t = t.narrow(axis, 0, size)
    if t.shape != shape:
        raise RuntimeError(
            f"slicing produced {tuple(t.shape)}, expected {tuple(shape)} (asrq.supernet.elastic "
            "bug)"
        )
    return t.contiguous()  # the layout a plain model's own tensors have: same kernels, same bits


@dataclass
class _Plan:
    """A subnet's meta-device template and how to fill it."""

    cfg: ModelConfig
    template: nn.Module
    shapes: dict[str, torch.Size]  # parameters and persistent buffers
    rules: dict[str, Rule]
    num_params: int
    device_cache: dict[torch.device, tuple[dict[str, Rule], dict[str, Tensor]]] = field(
        default_factory=dict
    )


def _non_persistent(template: nn.Module, cfg: ModelConfig) -> dict[str, Tensor]:
    """Values of the template's non-persistent buffers (not in any state dict), on the CPU."""
    persistent = set(template.state_dict().keys())
    out: dict[str, Tensor] = {}
    for name, _ in template.named_buffers():
        if name in persistent:
            continue
        mod_name, _, attr = name.rpartition(".")
        mod = template.get_submodule(mod_name)
        if isinstance(mod, RotarySelfAttention) and attr == "slopes":
            out[name] = alibi_slopes(mod.h) if cfg.encoder.alibi else torch.zeros(mod.h)
        else:
            raise RuntimeError(
                f"asrq.supernet.elastic: a new non-persistent buffer {name} needs a value rule here"
            )
    return out


@contextlib.contextmanager
def bind(module: nn.Module, tensors: Mapping[str, Tensor]) -> Iterator[nn.Module]:
    """Put ``tensors`` in place of ``module``'s parameters / buffers of those names for the
    duration (what ``torch.func.functional_call`` does around ``forward``, for any method)."""
    saved = []
    try:
        for name, t in tensors.items():
            mod_name, _, attr = name.rpartition(".")
            mod = module.get_submodule(mod_name)
            store = mod._parameters if attr in mod._parameters else mod._buffers
            if attr not in store:
                raise KeyError(f"{name}: not a parameter or buffer of {type(module).__name__}")
            saved.append((store, attr, store[attr]))
            store[attr] = t
        yield module
    finally:
        for store, attr, old in reversed(saved):
            store[attr] = old


class Supernet:
    """A supernet: ``model`` is the plain model of the largest config ``cfg``; subnets run
    inside it through :meth:`active` (see the module doc). Templates are cached per
    (spec, dropout), at most ``cache_size`` of them (least recently used go). ``quant``: the
    :class:`asrq.quant.QuantConfig` ``model`` was fake-quantized with (None: float)."""

    def __init__(
        self, model: nn.Module, cfg: ModelConfig, cache_size: int = 64, quant: Any = None
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.cache_size = cache_size
        self.quant = quant
        self._plans: OrderedDict[tuple[SubnetSpec, float | None], _Plan] = OrderedDict()

    def plan(self, spec: SubnetSpec, dropout: float | None = None) -> _Plan:
        key = (spec, dropout)
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        cfg = subnet_model_config(self.cfg, spec, dropout)
        with torch.device("meta"):
            template = quantized_template(build_model(cfg), self.quant)
        shapes = {k: v.shape for k, v in template.state_dict().items()}
        plan = _Plan(
            cfg, template, shapes, slicing_rules(template, self.cfg), count_parameters(template)
        )
        self._plans[key] = plan
        if len(self._plans) > self.cache_size:
            self._plans.popitem(last=False)
        return plan

    def num_params(self, spec: SubnetSpec) -> int:
        """Parameters of the subnet (as a plain model)."""
        return self.plan(spec).num_params

    def sliced_tensors(self, plan: _Plan) -> dict[str, Tensor]:
        """The subnet's parameters and persistent buffers, cut from the supernet's
        (differentiable)."""
        source = dict(self.model.named_parameters())
        source.update(self.model.named_buffers())
        dev = next(iter(source.values())).device
        if dev not in plan.device_cache:
            rules = {
                k: tuple(None if i is None else i.to(dev) for i in r) for k, r in plan.rules.items()
            }
            extra = {k: v.to(dev) for k, v in _non_persistent(plan.template, plan.cfg).items()}
            plan.device_cache[dev] = (rules, extra)
        rules, _ = plan.device_cache[dev]
        return {k: cut(source[k], shape, rules.get(k)) for k, shape in plan.shapes.items()}

    @contextlib.contextmanager
    def active(self, spec: SubnetSpec, dropout: float | None = None) -> Iterator[nn.Module]:
        """A plain model of subnet ``spec`` computing with the supernet's (sliced) weights, in the
        supernet's train / eval mode; ``dropout``: its encoder dropout (None: the supernet's).
        Use it only inside the ``with`` block."""
        plan = self.plan(spec, dropout)
        if plan.cfg == self.cfg:  # the whole supernet
            yield self.model
            return
        tensors = self.sliced_tensors(plan)
        tensors.update(plan.device_cache[next(iter(tensors.values())).device][1])
        plan.template.train(self.model.training)
        with bind(plan.template, tensors) as m:
            yield m


def slice_model(
    model: nn.Module,
    cfg: ModelConfig,
    spec: SubnetSpec,
    dropout: float | None = None,
    quant: Any = None,
) -> tuple[nn.Module, ModelConfig]:
    """Cut subnet ``spec`` out of supernet ``model`` (the plain model of ``cfg``): a standalone
    model built by :func:`asrq.models.build_model` holding copies of the sliced weights, and its
    :class:`ModelConfig`. It computes exactly what ``Supernet(model, cfg).active(spec)`` does
    and is in ``model``'s train / eval mode, on its device. ``quant``: ``model`` is
    fake-quantized with it; the slice is too, with its sliced step sizes."""
    sn = Supernet(model, cfg, cache_size=1, quant=quant)
    plan = sn.plan(spec, dropout)
    with torch.no_grad():
        tensors = {k: v.detach().clone() for k, v in sn.sliced_tensors(plan).items()}
    plain = quantized_template(build_model(plan.cfg), quant)
    plain.load_state_dict(tensors, strict=True)
    dev = next(iter(tensors.values())).device
    return plain.to(dev).train(model.training), plan.cfg
