"""Fake quantizers with learned step sizes (LSQ) and the gradient estimators through them.

Quantize-dequantize (``s`` step size, ``z`` integer zero point, levels ``[qmin, qmax]``)::

    Q(x) = (clamp(round(x / s) + z, qmin, qmax) - z) * s

Weights: symmetric (``z = 0``, ``qmin = -qmax``), one ``s`` per output channel, shape
``(out, 1)``, or per group of ``G`` input channels, shape ``(out, in / G)``: the step sizes sit
on the weight's rows, so slicing a supernet's output channels slices them with the same index.
Activations: per tensor, affine int8 (``qmin, qmax = -128, 127``), ``s`` and ``z`` of shape
``(1,)``. ``round`` is round-half-to-even, as ``quantize_per_tensor``, onnxruntime's
``QuantizeLinear`` and XNNPACK round.

Estimators (``QuantConfig.estimator``):

``ste``: the straight-through estimator with LSQ's step-size gradient (Esser et al. 2020,
  "Learned Step Size Quantization"): ``round`` passes gradients unchanged, so
  ``dQ/dx = 1`` inside the range and 0 where clamped, and
  ``dQ/ds = round(x/s) - x/s`` inside, ``qmin - z`` / ``qmax - z`` where clamped below / above;
  the step size's gradient is multiplied by LSQ's ``g = 1 / sqrt(N * qmax)`` (``N``: the
  elements one step size covers: a row or group of a weight, the whole input tensor for an
  activation; implemented as a forward-identity, backward-times-``g`` on ``s``).

``noise``: error-aware noise tempering (Wang, Li, Qu, Metze, Strubell, arXiv 2212.05603). Only
  the abstract was available ("exponentially decaying quantization-error-aware noise together
  with a learnable scale of task loss gradient"); the formulation here is ours. In training::

      e     = Q_lsq(sg[x]) - sg[x]               # the quantization error; its s-gradient is LSQ's
      a(t)  = noise_init * exp(-t / noise_decay_steps)
      xi    ~ U(-1, 1), i.i.d. per element and per forward
      x_hat = G_gamma(x) + e * (1 + a(t) * xi)

  ``sg`` is stop-gradient; ``G_gamma(x) = gamma * x + sg((1 - gamma) * x)`` is the identity in
  the forward, multiplies the task-loss gradient reaching ``x`` by ``gamma`` in the backward, and
  gives the learnable per-quantizer scalar ``gamma`` (init 1, used clamped to [0.1, 10]) the
  gradient ``sum(dL/dx_hat * x)``: the loss's derivative for a rescaled quantizer input.
  Choices (ours, not the paper's): the forward value is ``Q(x) + a(t) * xi * (Q(x) - x)``, the
  deployed quantizer plus noise proportional to each element's own error (zero on grid points,
  at most ``a(t) * s / 2`` inside the range), so the forward converges to the true quantizer as
  ``a(t) -> 0``; the backward to ``x`` has no clipping mask (the noise, not a pretend derivative
  of ``round``, stands in for the quantizer, as in additive-noise QAT); step sizes keep LSQ's
  gradient, scaled by ``1 + a(t) * xi``. ``t`` is the training step, set by the training loop
  with :func:`set_qat_step` (a persistent buffer, so resume continues the schedule). In eval
  mode ``x_hat = Q(x)``.

``squat``: the quantizers behave as ``ste``; the alternation of SAM weight steps and step-size
  steps is in the training step (asrq.quant.squat).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from asrq.quant.config import Estimator

ACT_QMIN, ACT_QMAX = -128, 127
GAMMA_RANGE = (0.1, 10.0)


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` in the forward, identity in the backward."""
    return (x.round() - x).detach() + x


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, g: float) -> Tensor:
        ctx.g = g
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.g, None


def grad_scale(x: Tensor, g: float) -> Tensor:
    """``x`` in the forward, bit for bit (the step size export writes is the one the forward
    used; ``(x - x * g).detach() + x * g`` can be an ulp off, and an ulp moves a value on a
    half step to the other level); the backward multiplies the gradient by ``g``."""
    return _GradScale.apply(x, g)


def fake_quant(
    x: Tensor, scale: Tensor, zero_point: Tensor | float, qmin: int, qmax: int
) -> Tensor:
    """``(clamp(round(x / s) + z, qmin, qmax) - z) * s`` with straight-through ``round`` (LSQ's
    gradients for ``x`` and ``s``). ``scale`` broadcasts against ``x``; ``zero_point`` holds
    integers."""
    return (torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax) - zero_point) * scale


INT32_MAX = 2**31 - 1


def int32_bias(bias: Tensor, scale: Tensor) -> Tensor:
    """``bias`` on the integer kernels' grid: ``clamp(round(b / s), int32) * s`` with
    ``s = input scale x weight scale`` ``(out,)`` (straight-through ``round``; ``s`` is taken as a
    constant). XNNPACK's static int8 GEMM / conv and onnxruntime's ``QLinearConv`` / ``QGemm``
    add the bias to the int32 accumulator, so they round a float bias to this grid themselves;
    a fake-quant model that kept the float bias differs from them by up to half a step per
    output, enough to move ~0.1% of int8 outputs one level (measured: 30 dB SQNR on the trained
    demo encoder; 142-146 dB with the bias on the grid)."""
    s = scale.detach()
    return torch.clamp(round_ste(bias / s), -INT32_MAX, INT32_MAX) * s


def noise_amplitude(step: int | float, init: float, decay_steps: float) -> float:
    """``a(t) = init * exp(-t / decay_steps)`` of the noise estimator."""
    return float(init * math.exp(-float(step) / decay_steps))


class _Quantizer(nn.Module):
    """Shared estimator machinery of weight and activation quantizers."""

    def __init__(self, estimator: Estimator, noise_init: float, noise_decay_steps: float) -> None:
        super().__init__()
        self.estimator = estimator
        self.noise_init = noise_init
        self.noise_decay_steps = noise_decay_steps
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        if estimator == "noise":
            self.gamma = nn.Parameter(torch.ones(1))

    def noise_amplitude(self) -> float:
        return noise_amplitude(int(self.step), self.noise_init, self.noise_decay_steps)

    def _estimate(self, x: Tensor, q_fn) -> Tensor:
        """``q_fn(x)`` (LSQ fake quant); the noise estimator's forward/backward in training."""
        if self.estimator != "noise" or not self.training:
            return q_fn(x)
        xd = x.detach()
        e = q_fn(xd) - xd
        a = self.noise_amplitude()
        if a > 0:
            xi = torch.rand_like(xd) * 2.0 - 1.0
            e = e * (1.0 + a * xi)
        gamma = self.gamma.clamp(*GAMMA_RANGE)
        return gamma * x + ((1.0 - gamma) * x).detach() + e


class WeightFakeQuant(_Quantizer):
    """Symmetric fake quantizer of a weight ``(out, ...)``: ``scale`` ``(out, 1)`` per channel or
    ``(out, ceil(in / G))`` per group (``group_size`` G > 0; 2-D weights only). When ``in`` is not
    a multiple of ``G`` the last group holds the remaining ``in % G`` columns: the weight is
    quantized as if zero-padded to a whole group (zeros stay zero), which is exactly what an
    export that pads the layer's input to a multiple of ``G`` computes."""

    def __init__(
        self,
        weight: Tensor,
        qmax: int,
        group_size: int = 0,
        estimator: Estimator = "ste",
        noise_init: float = 1.0,
        noise_decay_steps: float = 200.0,
    ) -> None:
        super().__init__(estimator, noise_init, noise_decay_steps)
        out = weight.shape[0]
        self.qmax = int(qmax)
        self.group_size = int(group_size)
        if group_size:
            if weight.dim() != 2:
                raise ValueError(
                    f"grouped weights need a 2-D weight, got shape {tuple(weight.shape)}"
                )
            shape = (out, -(-weight.shape[1] // group_size))
        else:
            shape = (out, 1)
        self.scale = nn.Parameter(torch.ones(shape, dtype=weight.dtype))

    def effective_scale(self) -> Tensor:
        """The step sizes the forward uses (and export writes): ``(out, 1)`` / ``(out, groups)``."""
        return self.scale.detach().abs().clamp(min=1e-12)

    def _rows(self, w: Tensor) -> Tensor:
        """The weight as ``(out, groups, G)``, zero-padded to whole groups (per channel:
        ``(out, 1, in * k...)``)."""
        if self.group_size and w.shape[1] % self.group_size:
            w = nn.functional.pad(w, (0, self.group_size - w.shape[1] % self.group_size))
        return w.reshape(w.shape[0], self.scale.shape[1], -1)

    @torch.no_grad()
    def init_scale(self, w: Tensor, method: str = "mse") -> None:
        """Step sizes from the weight: ``max|w| / qmax`` per row / group, or (``mse``) the
        clipping ratio in {0.50, 0.51, ..., 1.00} of that with the least squared error."""
        rows = self._rows(w.detach().float())  # (out, groups, G)
        amax = rows.abs().amax(dim=-1).clamp(min=1e-8)  # (out, groups)
        best = amax / self.qmax
        if method == "mse":
            best_err = torch.full_like(amax, float("inf"))
            for r in torch.linspace(0.5, 1.0, 51):
                s = amax * r / self.qmax
                q = torch.clamp(torch.round(rows / s[..., None]), -self.qmax, self.qmax)
                err = ((q * s[..., None] - rows) ** 2).sum(dim=-1)
                better = err < best_err
                best = torch.where(better, s, best)
                best_err = torch.where(better, err, best_err)
        elif method != "max":
            raise ValueError(f"unknown weight_init {method!r} (max or mse)")
        self.scale.copy_(best.to(self.scale.dtype))
        self.initialized.fill_(True)

    def forward(self, w: Tensor) -> Tensor:
        rows = self._rows(w)
        g = 1.0 / math.sqrt(rows.shape[-1] * self.qmax)
        s = grad_scale(self.scale.abs().clamp(min=1e-12), g)[..., None]  # (out, groups, 1)

        def q_fn(v: Tensor) -> Tensor:
            return fake_quant(v, s, 0.0, -self.qmax, self.qmax)

        q = self._estimate(rows, q_fn).reshape(w.shape[0], -1)  # (out, padded in)
        return q[:, : w.shape[1]].reshape(w.shape) if w.dim() == 2 else q.reshape(w.shape)

    def extra_repr(self) -> str:
        return f"qmax={self.qmax}, group_size={self.group_size}, estimator={self.estimator}"


class ActFakeQuant(_Quantizer):
    """Per-tensor affine int8 fake quantizer of an activation, learned ``scale`` ``(1,)`` and a
    calibrated integer ``zero_point`` ``(1,)``.

    Calibration (:meth:`calibrating` true): the forward passes ``x`` through unchanged and tracks
    its min / max; :meth:`finish_calibration` sets ``scale = (max - min) / 255`` and the zero
    point that maps ``min`` to -128. An uncalibrated quantizer initialises itself from the first
    batch it sees."""

    def __init__(
        self,
        estimator: Estimator = "ste",
        noise_init: float = 1.0,
        noise_decay_steps: float = 200.0,
    ) -> None:
        super().__init__(estimator, noise_init, noise_decay_steps)
        self.qmin, self.qmax = ACT_QMIN, ACT_QMAX
        self.scale = nn.Parameter(torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1))
        self.register_buffer("min_val", torch.tensor([float("inf")]))
        self.register_buffer("max_val", torch.tensor([float("-inf")]))
        self.calibrating = False

    def effective_scale(self) -> Tensor:
        """The step size the forward uses (and export writes), ``(1,)``."""
        return self.scale.detach().abs().clamp(min=1e-12)

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        self.min_val.copy_(torch.minimum(self.min_val, x.detach().min().reshape(1)))
        self.max_val.copy_(torch.maximum(self.max_val, x.detach().max().reshape(1)))

    @torch.no_grad()
    def finish_calibration(self) -> None:
        """Scale and zero point from the observed range (widened to include 0, as the runtimes'
        affine schemes require an exact zero)."""
        if not torch.isfinite(self.min_val).all():
            return  # never saw data: stays uninitialised
        lo = torch.clamp(self.min_val, max=0.0)
        hi = torch.clamp(self.max_val, min=0.0)
        s = torch.clamp((hi - lo) / float(self.qmax - self.qmin), min=1e-8)
        z = torch.clamp(self.qmin - torch.round(lo / s), self.qmin, self.qmax)
        self.scale.copy_(s)
        self.zero_point.copy_(z)
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            self.observe(x)
            return x
        if not bool(self.initialized):
            self.observe(x)
            self.finish_calibration()
        g = 1.0 / math.sqrt(x.numel() * self.qmax)
        s = grad_scale(self.scale.abs().clamp(min=1e-12), g)

        def q_fn(v: Tensor) -> Tensor:
            return fake_quant(v, s, self.zero_point, self.qmin, self.qmax)

        return self._estimate(x, q_fn)

    def extra_repr(self) -> str:
        return f"int8 affine per-tensor, estimator={self.estimator}"


def quantizers(model: nn.Module) -> list[_Quantizer]:
    """Every fake quantizer in ``model``."""
    return [m for m in model.modules() if isinstance(m, _Quantizer)]


def set_qat_step(model: nn.Module, step: int) -> None:
    """Set the training step every quantizer's noise schedule reads (call once per step)."""
    for q in quantizers(model):
        q.step.fill_(int(step))
