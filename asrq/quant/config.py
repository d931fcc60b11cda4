"""Quantization configs: :class:`QuantConfig` (what :func:`asrq.quant.quantize_` does to a model)
and :class:`QatConfig` (the ``qat:`` section of a QAT fine-tuning run), in the style of
:mod:`asrq.config`: dataclasses validated in ``__post_init__``, loadable with
:func:`asrq.config.from_dict` and stored resolved in every QAT checkpoint.

Module selection: every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` whose dotted module name
matches one of ``include`` (``fnmatch`` patterns on ``model.named_modules()`` names) is made
fake-quantized; the first :class:`ModuleOverride` whose ``pattern`` matches then changes its
settings (``skip: true`` keeps it in float). ``nn.Embedding`` (predictor, attention decoder) is
never quantized: the runtimes gather from float tables.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Literal

from asrq.utils.io import AsrqError

WeightDtype = Literal["int8", "int4"]
Estimator = Literal["ste", "noise", "squat"]

#: default largest weight level per dtype (symmetric, narrow range: -qmax..qmax)
DEFAULT_QMAX = {"int8": 127, "int4": 7}
#: XNNPACK's 8da4w kernels take groups that are multiples of 32
INT4_GROUP_MULTIPLE = 32


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise AsrqError(f"invalid config: {msg}")


@dataclass
class ModuleOverride:
    """Per-module settings for modules whose name matches ``pattern`` (``fnmatch``, e.g.
    ``encoder.embed.conv.0`` or ``*.dw``). ``None`` fields keep the global setting."""

    pattern: str = ""
    skip: bool = False  # keep the module in float
    weight_dtype: WeightDtype | None = None
    weight_qmax: int | None = None
    activations: bool | None = None
    outputs: bool | None = None

    def __post_init__(self) -> None:
        _check(bool(self.pattern), "quant.overrides[].pattern must not be empty")
        if self.weight_qmax is not None:
            _check(self.weight_qmax >= 1, "quant.overrides[].weight_qmax must be >= 1")


def _default_overrides() -> list[ModuleOverride]:
    return [
        # the subsampling convs stay float: the first has one input channel (int8 gains nothing),
        # and XNNPACK leaves the second's static int8 form undelegated (its output has a second
        # user, the shape read of the reshape that follows), which would leave int8 weights on
        # portable kernels
        ModuleOverride(pattern="encoder.embed.conv.*", skip=True),
        # the pruned-RNN-T "simple" projections exist only in the training loss
        ModuleOverride(pattern="simple_am_proj", skip=True),
        ModuleOverride(pattern="simple_lm_proj", skip=True),
        # the joiner output (logits) keeps 8-bit weights even in int4 models
        ModuleOverride(pattern="joiner.output_linear", weight_dtype="int8"),
    ]


@dataclass(frozen=True)
class ModuleQuantSettings:
    """The resolved settings of one quantized module (see :meth:`QuantConfig.settings_for`)."""

    weight_dtype: WeightDtype
    weight_qmax: int
    group_size: int  # 0: per output channel
    activations: bool
    outputs: bool


@dataclass
class QuantConfig:
    """Fake quantization with learned step sizes (LSQ; asrq.quant.fake_quant).

    Weights: symmetric, per output channel (``int8``) or per group of ``group_size`` input
    channels (``int4``; XNNPACK 8da4w needs a multiple of 32 that divides ``in_features``),
    levels ``-weight_qmax .. weight_qmax``. ``weight_qmax`` 0 means the dtype's default (127 /
    7); 63 gives 7-bit int8 weights, which onnxruntime's u8s8 kernels on x86 without VNNI need to
    keep their accuracy (notes/quantization.md: 36 dB vs 17 dB at full 8 bits). Convolutions keep
    per-channel 8-bit weights in an ``int4`` model (8da4w covers linear layers only).

    Activations (``activations: true``): per-tensor *affine* int8 (-128..127, a zero point) at the
    input of every quantized layer, the tensor the runtimes quantize (XNNPACK's quantizer and
    onnxruntime's QDQ ``MatMulIntegerToFloat`` both take asymmetric int8 inputs; most inputs here
    follow SiLU / GLU / ReLU / tanh and are one-sided, so a zero point keeps twice the levels of a
    symmetric grid). The step size is learned; the zero point is set at calibration and fixed.
    ``outputs: true`` also fake-quantizes each layer's output the same way: XNNPACK's static int8
    GEMM / conv kernels take int8 in and out (its partitioner delegates a static-quant linear only
    when a quantize node follows it), so a ``.pte`` with learned scales needs them; onnxruntime's
    ``MatMulIntegerToFloat`` does not (``outputs: false`` for ONNX-only models).

    ``estimator``: the gradient through the quantizers (asrq.quant.fake_quant, asrq.quant.squat):
    ``ste`` (LSQ), ``noise`` (error-aware noise tempering: amplitude ``noise_init *
    exp(-step / noise_decay_steps)``) or ``squat`` (SAM steps on weights with radius
    ``squat_rho`` alternating with step-size steps).

    ``int4_unaligned``: what an ``int4`` linear layer whose ``in_features`` is not a multiple of
    ``group_size`` gets (XNNPACK's 8da4w groups only whole multiples of 32, and d=144 is not):
    ``error`` (the default: name the layer), ``pad`` (int4 with a last group of ``in % G``
    columns, quantized as if zero-padded; the ``.pte`` pads the layer's input to a whole group,
    ONNX ``MatMulNBits`` pads itself) or ``int8`` (per-channel 8-bit weights).

    ``weight_init``: initial weight step sizes, ``max`` (max-abs / qmax per channel or group) or
    ``mse`` (the clipping ratio in [0.5, 1] with the least squared error, per row / group).
    """

    weight_dtype: WeightDtype = "int8"
    weight_qmax: int = 0
    group_size: int = 32
    int4_unaligned: Literal["error", "pad", "int8"] = "error"
    weight_init: Literal["max", "mse"] = "mse"
    activations: bool = True
    outputs: bool = True
    estimator: Estimator = "ste"
    noise_init: float = 1.0
    noise_decay_steps: float = 200.0
    squat_rho: float = 0.05
    include: list[str] = field(default_factory=lambda: ["*"])
    overrides: list[ModuleOverride] = field(default_factory=_default_overrides)

    def __post_init__(self) -> None:
        _check(
            self.weight_qmax >= 0,
            f"quant.weight_qmax must be >= 0 (0: dtype default), got {self.weight_qmax}",
        )
        limit = DEFAULT_QMAX[self.weight_dtype]
        _check(
            self.weight_qmax <= limit,
            f"quant.weight_qmax {self.weight_qmax} exceeds {limit} for {self.weight_dtype}",
        )
        _check(
            self.group_size >= INT4_GROUP_MULTIPLE and self.group_size % INT4_GROUP_MULTIPLE == 0,
            f"quant.group_size must be a multiple of {INT4_GROUP_MULTIPLE} (XNNPACK 8da4w), "
            f"got {self.group_size}",
        )
        _check(self.noise_init >= 0, "quant.noise_init must be >= 0")
        _check(self.noise_decay_steps > 0, "quant.noise_decay_steps must be > 0")
        _check(self.squat_rho > 0, "quant.squat_rho must be > 0")
        _check(bool(self.include), "quant.include must list at least one pattern")
        for o in self.overrides:
            if o.weight_qmax is not None:
                dt = o.weight_dtype or self.weight_dtype
                _check(
                    o.weight_qmax <= DEFAULT_QMAX[dt],
                    f"quant.overrides[{o.pattern}].weight_qmax {o.weight_qmax} exceeds "
                    f"{DEFAULT_QMAX[dt]} for {dt}",
                )

    def settings_for(self, name: str) -> ModuleQuantSettings | None:
        """The settings of module ``name``, or None when it stays float (not included, or an
        override says ``skip``)."""
        if not any(fnmatch.fnmatchcase(name, p) for p in self.include):
            return None
        dtype, qmax, acts = self.weight_dtype, self.weight_qmax, self.activations
        outs = self.outputs
        for o in self.overrides:
            if fnmatch.fnmatchcase(name, o.pattern):
                if o.skip:
                    return None
                if o.weight_dtype is not None and o.weight_dtype != dtype:
                    dtype, qmax = o.weight_dtype, 0
                qmax = o.weight_qmax if o.weight_qmax is not None else qmax
                acts = o.activations if o.activations is not None else acts
                outs = o.outputs if o.outputs is not None else outs
                break
        qmax = qmax or DEFAULT_QMAX[dtype]
        return ModuleQuantSettings(
            dtype, qmax, self.group_size if dtype == "int4" else 0, acts, outs and acts
        )


@dataclass
class QatConfig:
    """The ``qat:`` section of a QAT fine-tuning config (``asrq qat train``).

    ``init``: the fp32 checkpoint to start from (a ``model.pt``; ``--init`` sets it).
    ``calib_batches``: training batches whose activation ranges initialise the activation step
    sizes and zero points (no gradient step). ``scale_lr_scale``: the quantizer parameters'
    (step sizes, the noise estimator's gradient scales) learning rate as a multiple of
    ``train.optim.lr``.
    """

    init: str = ""
    calib_batches: int = 4
    scale_lr_scale: float = 1.0
    quant: QuantConfig = field(default_factory=QuantConfig)

    def __post_init__(self) -> None:
        _check(self.calib_batches >= 1, "qat.calib_batches must be >= 1")
        _check(self.scale_lr_scale > 0, "qat.scale_lr_scale must be > 0")
