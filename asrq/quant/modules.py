"""Fake-quantized layers and the :func:`quantize_` transform (torchao's ``quantize_(model,
config)`` style, STYLE.md point 6).

``quantize_`` changes matching ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` modules *in place*
into :class:`QuantLinear` / :class:`QuantConv1d` / :class:`QuantConv2d`: subclasses that keep
their ``weight`` / ``bias`` parameters (same names, same objects) and add ``weight_fq``
(:class:`~asrq.quant.fake_quant.WeightFakeQuant`) and ``input_fq``
(:class:`~asrq.quant.fake_quant.ActFakeQuant`, or None). A quantized model's state dict is
the float model's plus ``<layer>.weight_fq.*`` / ``<layer>.input_fq.*`` entries, so everything
that reads weights by name (EMA, slicing, export wrappers) keeps working; ``isinstance(m,
nn.Linear)`` still holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrq.quant.config import DEFAULT_QMAX, ModuleQuantSettings, QuantConfig
from asrq.quant.fake_quant import ActFakeQuant, WeightFakeQuant, int32_bias
from asrq.utils.io import AsrqError


class _QuantMixin:
    weight_fq: WeightFakeQuant
    input_fq: ActFakeQuant | None
    output_fq: ActFakeQuant | None
    quant_settings: ModuleQuantSettings

    def _q_input(self, x: Tensor) -> Tensor:
        return self.input_fq(x) if self.input_fq is not None else x

    def _q_output(self, y: Tensor) -> Tensor:
        return self.output_fq(y) if self.output_fq is not None else y

    def _q_bias(self) -> Tensor | None:
        """The bias as the int8 runtimes add it: on the int32 grid of input scale x weight scale
        (:func:`~asrq.quant.fake_quant.int32_bias`) where the input is statically quantized and
        the weight per channel; else (no input quantizer, grouped int4 weights, calibration) the
        float bias. Call after the input quantizer (which may initialise itself)."""
        b: Tensor | None = self.bias  # type: ignore[attr-defined]
        q = self.input_fq
        if b is None or q is None or q.calibrating or not bool(q.initialized):
            return b
        if self.weight_fq.group_size:
            return b
        return int32_bias(b, (q.effective_scale() * self.weight_fq.effective_scale()).reshape(-1))


class QuantLinear(nn.Linear, _QuantMixin):
    """``nn.Linear`` with fake-quantized input activation and weight."""

    def forward(self, x: Tensor) -> Tensor:
        x = self._q_input(x)
        return self._q_output(F.linear(x, self.weight_fq(self.weight), self._q_bias()))


class QuantConv1d(nn.Conv1d, _QuantMixin):
    """``nn.Conv1d`` (depthwise and grouped included) with fake-quantized input and weight."""

    def forward(self, x: Tensor) -> Tensor:
        x = self._q_input(x)
        return self._q_output(self._conv_forward(x, self.weight_fq(self.weight), self._q_bias()))


class QuantConv2d(nn.Conv2d, _QuantMixin):
    """``nn.Conv2d`` with fake-quantized input and weight."""

    def forward(self, x: Tensor) -> Tensor:
        x = self._q_input(x)
        return self._q_output(self._conv_forward(x, self.weight_fq(self.weight), self._q_bias()))


_SWAP: dict[type, type] = {nn.Linear: QuantLinear, nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d}
_FLOAT: dict[type, type] = {v: k for k, v in _SWAP.items()}
QUANT_TYPES = tuple(_FLOAT)


def quantize_(model: nn.Module, cfg: QuantConfig, init_scales: bool = True) -> nn.Module:
    """Make ``model``'s matching layers fake-quantized, in place; returns ``model``.

    Weight step sizes are initialised from the weights now (``cfg.weight_init``; skipped with
    ``init_scales=False`` when a state dict with learned ones is loaded next); activation step
    sizes by :func:`calibrate` (or, failing that, from the first training batch).

    Raises AsrqError when an ``int4`` layer's ``in_features`` is not a multiple of
    ``cfg.group_size`` (naming the layer: give it an 8-bit override, choose such widths, or set
    ``int4_unaligned: pad`` or ``int8``).
    """
    done = 0
    for name, mod in list(model.named_modules()):
        if type(mod) not in _SWAP:
            continue
        settings = cfg.settings_for(name)
        if settings is None:
            continue
        if settings.group_size:
            if not isinstance(mod, nn.Linear):
                settings = ModuleQuantSettings(
                    "int8", 127, 0, settings.activations, settings.outputs
                )  # 8da4w covers linear layers only: convolutions keep 8-bit weights
            elif mod.in_features % settings.group_size and cfg.int4_unaligned == "int8":
                settings = ModuleQuantSettings(
                    "int8", DEFAULT_QMAX["int8"], 0, settings.activations, settings.outputs
                )
            elif mod.in_features % settings.group_size and cfg.int4_unaligned == "pad":
                pass  # the last group is zero-padded (WeightFakeQuant); export pads the input
            elif mod.in_features % settings.group_size:
                raise AsrqError(
                    f"quant: int4 layer {name!r} has in_features {mod.in_features}, not a multiple "
                    f"of group_size {settings.group_size} (XNNPACK 8da4w); add an override "
                    f"{{pattern: {name!r}, weight_dtype: int8}}, choose widths that divide by "
                    f"{settings.group_size}, or set quant.int4_unaligned: pad (or int8)"
                )
        est = cfg.estimator
        wfq = WeightFakeQuant(
            mod.weight,
            settings.weight_qmax,
            settings.group_size,
            est,
            cfg.noise_init,
            cfg.noise_decay_steps,
        ).to(mod.weight.device)
        if init_scales:
            wfq.init_scale(mod.weight, cfg.weight_init)
        mod.__class__ = _SWAP[type(mod)]
        mod.weight_fq = wfq
        mod.input_fq = (
            ActFakeQuant(est, cfg.noise_init, cfg.noise_decay_steps).to(mod.weight.device)
            if settings.activations
            else None
        )
        mod.output_fq = (
            ActFakeQuant(est, cfg.noise_init, cfg.noise_decay_steps).to(mod.weight.device)
            if settings.outputs
            else None
        )
        mod.quant_settings = settings
        done += 1
    if done == 0:
        raise AsrqError("quant: no layer matched quant.include / overrides; nothing to quantize")
    return model


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: layer}`` of the fake-quantized layers of ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QUANT_TYPES)}


def float_layers(model: nn.Module) -> list[str]:
    """Names of the Linear / Conv layers that stayed float (for export metadata)."""
    return [n for n, m in model.named_modules() if type(m) in _SWAP]


def is_quant_param(name: str) -> bool:
    """Whether a parameter name belongs to a fake quantizer (step sizes, noise gradient scales)."""
    return any(f".{k}." in f".{name}" for k in ("weight_fq", "input_fq", "output_fq"))


def split_parameters(
    model: nn.Module,
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(network parameters, quantizer parameters) of ``model`` as ``(name, p)`` lists."""
    net, q = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (q if is_quant_param(n) else net).append((n, p))
    return net, q


@contextlib.contextmanager
def calibrating(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the activation quantizers only observe ranges (identity forward); on
    exit they take their scale and zero point from what they saw."""
    acts = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    for a in acts:
        a.calibrating = True
        a.min_val.fill_(float("inf"))
        a.max_val.fill_(float("-inf"))
    try:
        yield model
    finally:
        for a in acts:
            a.calibrating = False
            a.finish_calibration()


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable, forward) -> int:
    """Run ``forward(model, batch)`` over ``batches`` in calibration mode; returns the count."""
    n = 0
    with calibrating(model):
        for b in batches:
            forward(model, b)
            n += 1
    return n


@dataclass(frozen=True)
class LayerQParams:
    """The learned quantization parameters of one layer, as export needs them."""

    weight_scale: Tensor  # (out, 1) per channel or (out, groups)
    weight_qmax: int
    group_size: int  # 0: per channel
    act_scale: float | None  # None: input not quantized
    act_zero_point: int | None
    out_scale: float | None = None  # None: output not quantized
    out_zero_point: int | None = None


def layer_qparams(layer: nn.Module) -> LayerQParams:
    wfq, a, o = layer.weight_fq, layer.input_fq, layer.output_fq
    return LayerQParams(
        wfq.effective_scale().clone(),
        wfq.qmax,
        wfq.group_size,
        None if a is None else float(a.effective_scale()),
        None if a is None else int(a.zero_point.item()),
        None if o is None else float(o.effective_scale()),
        None if o is None else int(o.zero_point.item()),
    )


def strip_fake_quant(
    model: nn.Module, snap_weights: bool = False
) -> tuple[nn.Module, dict[str, LayerQParams]]:
    """In place: turn every fake-quantized layer back into its float class (same weights, the
    bias as the fake-quant layer adds it, i.e. on the int32 grid where it has one; no
    quantizers); returns ``(model, {layer name: LayerQParams})`` with the learned parameters.
    Export uses the table to put the learned scales on the exported graph.

    ``snap_weights``: the weights become their fake-quantized values ``q * s`` (exact integers
    times the learned steps). An exporter that quantizes them again with the same steps then
    gets the eager model's integers whatever its rounding formula: PT2E's
    ``quantize_per_channel`` rounds ``w * (1 / s)``, the fake quantizer ``w / s``, and a weight
    within float error of a half step lands on different levels (measured: 1-4 of the 4.2M
    weights of each trained d=144 QAT int8 model, enough to move its transcripts)."""
    table: dict[str, LayerQParams] = {}
    for name, mod in list(model.named_modules()):
        if isinstance(mod, QUANT_TYPES):
            table[name] = layer_qparams(mod)
            b = mod._q_bias()
            with torch.no_grad():
                if b is not None and b is not mod.bias:  # the float model keeps the grid bias
                    mod.bias.copy_(b)
                if snap_weights:
                    mod.weight.copy_(mod.weight_fq(mod.weight))
            del mod.weight_fq
            del mod.input_fq
            del mod.output_fq
            del mod.quant_settings
            mod.__class__ = _FLOAT[type(mod)]
    return model, table
