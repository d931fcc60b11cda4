"""The RNN-T as four deployable programs with tensor-only signatures (STYLE.md point 8;
icefall's ``OnnxEncoder/OnnxDecoder/OnnxJoiner``, ExecuTorch's ``emformer_rnnt`` example).

===================== ============================================================ ===========================
program               inputs                                                       outputs
===================== ============================================================ ===========================
``encoder``           x (N, T, F) f32, x_lens (N,) i64                             encoder_out (N, T', J),
                                                                                   encoder_out_lens (N,) i64
``encoder_streaming`` x (N, 4C+3, F), x_lens (N,), the encoder's states             encoder_out (N, C, J),
                      (conformer: attn_cache, conv_cache, processed)               out_lens (N,), new_<state>...
``predictor``         y (N, context_size) i64 (-1 = padding)                       predictor_out (N, J)
``joiner``            encoder_out (N, J), predictor_out (N, J)                     logits (N, V)
===================== ============================================================ ===========================

The streaming states are whatever the encoder declares with ``state_specs`` (see
:mod:`asrq.models.states`): their names become the program's input names (``new_<name>`` for the
outputs) and travel in the export metadata with their shapes, dtypes and batch axes. The
Conformer keeps ``attn_cache`` (L, N, left, 2D), ``conv_cache`` (L, N, D, K-1), ``processed`` (N,).

Encoder and predictor outputs are already projected to the joiner width ``J`` (``encoder_proj`` /
``decoder_proj``), so the joiner program is only ``output_linear(tanh(enc + pred))``.

Shape contract of the full-context ``encoder``: ``T = 4k + 3`` with ``k >= 2`` (then
``T' = k`` exactly; :func:`asrq.runtime.backends.encoder_input_frames` pads any length to it with
``LOG_EPSILON`` frames, which the lengths mask out). ``torch.export`` cannot prove its guards for
an arbitrary ``T`` through the two stride-2 convolutions, but it can for ``T = 4k + 3``.

Per target the batch axis differs:

- ONNX: ``N`` is dynamic in every program.
- ExecuTorch (XNNPACK): both encoders take ``N = 1`` (edge lowering specialised a dynamic batch of
  the encoder to its example size, and a static batch lets XNNPACK take the reshapes); the
  predictor and joiner keep a dynamic ``N`` for beam search. Runtimes loop over the batch.

:func:`xnnpack_friendly` is an export-time rewrite (STYLE.md point 6): XNNPACK has no LayerNorm,
so each ``nn.LayerNorm`` becomes the same arithmetic written with ops it does take, which more
than halves the delegate partitions (and the lowering time).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrq.models.states import StateSpec
from asrq.runtime.backends import MIN_ENCODER_STEPS, PROGRAMS

Target = Literal["onnx", "executorch"]

#: Default longest utterance the ExecuTorch full-context encoder is memory-planned for
#: (``4 * 750 + 3`` fbank frames = 30 s); ONNX has no bound.
DEFAULT_MAX_ENCODER_STEPS = 750


class EncoderProgram(nn.Module):
    """Full-context encoder + ``joiner.encoder_proj``: (N, T, F), (N,) -> (N, T', J), (N,)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.encoder_proj = model.joiner.encoder_proj

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        enc, lens = self.encoder(x, x_lens)
        return self.encoder_proj(enc), lens


class StreamingEncoderProgram(nn.Module):
    """One chunk of the streaming encoder + ``encoder_proj``: (x, x_lens, *states) ->
    (encoder_out, out_lens, *new_states), states in the order of ``encoder.state_specs`` (see
    :meth:`asrq.models.conformer.ConformerEncoder.streaming_forward`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.encoder_proj = model.joiner.encoder_proj

    def forward(self, x: Tensor, x_lens: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        enc, lens, new_states = self.encoder.streaming_forward(x, x_lens, list(states))
        return (self.encoder_proj(enc), lens, *new_states)


class PredictorProgram(nn.Module):
    """Stateless predictor on the last ``context_size`` tokens + ``decoder_proj``: (N, ctx) -> (N, J)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.predictor = model.predictor
        self.decoder_proj = model.joiner.decoder_proj

    def forward(self, y: Tensor) -> Tensor:
        return self.decoder_proj(self.predictor(y, need_pad=False)[:, -1])


class JoinerProgram(nn.Module):
    """Joiner on projected inputs: (N, J), (N, J) -> logits (N, V)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.joiner = model.joiner

    def forward(self, encoder_out: Tensor, predictor_out: Tensor) -> Tensor:
        return self.joiner(encoder_out, predictor_out, project_input=False)


@dataclass
class ProgramSpec:
    """One program ready for ``torch.export``: module, example inputs, names and dynamic shapes
    (keyed by ``forward`` argument name, as ``torch.export.export`` takes them)."""

    name: str
    module: nn.Module
    example_inputs: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_shapes: dict[str, Any] | None = None
    #: per input name: axis -> label, for docs/metadata (e.g. {"x": {0: "N", 1: "T"}})
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    #: the streaming states among the inputs (after x, x_lens), at the example batch size
    states: list[StateSpec] = field(default_factory=list)


@dataclass(frozen=True)
class StreamingGeometry:
    """Streaming shapes of an encoder: chunk ``C`` and left context (encoder frames), and its
    declared states at batch 1."""

    chunk_frames: int
    left_frames: int
    num_layers: int
    d_model: int
    feature_dim: int
    states: tuple[StateSpec, ...]

    @property
    def window_frames(self) -> int:
        """fbank frames per streaming window (``4C + 3``)."""
        return 4 * self.chunk_frames + 3

    def state_shapes(self, batch: int) -> dict[str, list[int]]:
        return {s.name: list(s.with_batch(batch).shape) for s in self.states}


def streaming_geometry(model: nn.Module, chunk_frames: int, left_frames: int) -> StreamingGeometry:
    cfg = model.encoder.cfg
    if chunk_frames < 1 or left_frames < 0:
        raise ValueError(
            f"chunk_frames must be >= 1 and left_frames >= 0 (got {chunk_frames}, {left_frames})"
        )
    states = tuple(model.encoder.state_specs(1, left_frames))
    return StreamingGeometry(
        chunk_frames, left_frames, cfg.num_layers, cfg.d_model, cfg.feature_dim, states
    )


def program_specs(
    model: nn.Module,
    chunk_frames: int,
    left_frames: int,
    target: Target,
    max_encoder_steps: int = DEFAULT_MAX_ENCODER_STEPS,
) -> dict[str, ProgramSpec]:
    """The four :class:`ProgramSpec` s of an eval-mode RNN-T for ``target`` (see the module doc).

    ``max_encoder_steps`` bounds ``T' = (T - 3) / 4`` of the full-context encoder (ExecuTorch
    plans memory for it; ONNX ignores it).
    """
    if target not in ("onnx", "executorch"):
        raise ValueError(f"unknown export target {target!r}")
    g = streaming_geometry(model, chunk_frames, left_frames)
    f, j = g.feature_dim, model.joiner.encoder_proj.out_features
    ctx = model.predictor.context_size
    onnx = target == "onnx"
    n_ex = 2 if onnx else 1
    batch = torch.export.Dim("N", min=1, max=1024) if onnx else None
    steps = torch.export.Dim(
        "steps", min=MIN_ENCODER_STEPS, max=None if onnx else max_encoder_steps
    )
    t_dim = 4 * steps + 3

    def axes(d: dict[int, Any]) -> dict[int, Any] | None:
        d = {k: v for k, v in d.items() if v is not None}
        return d or None

    gen = torch.Generator().manual_seed(0)
    # traced length: 40 encoder frames, more than one block of the stateformer's blockwise SSM
    # (a traced block count of 1 let the exporter treat that axis as size 1)
    k_ex = 40
    x = torch.randn(n_ex, 4 * k_ex + 3, f, generator=gen)
    x_lens = torch.tensor([4 * k_ex + 3, 4 * k_ex - 5][:n_ex], dtype=torch.int64)
    enc = ProgramSpec(
        "encoder",
        EncoderProgram(model).eval(),
        (x, x_lens),
        ["x", "x_lens"],
        ["encoder_out", "encoder_out_lens"],
        {"x": axes({0: batch, 1: t_dim}), "x_lens": axes({0: batch})},
        {"x": {0: "N", 1: "T"} if onnx else {1: "T"}, "x_lens": {0: "N"} if onnx else {}},
    )

    state_specs = [s.with_batch(n_ex) for s in g.states]
    names = [s.name for s in state_specs]
    xs = torch.randn(n_ex, g.window_frames, f, generator=gen)
    xs_lens = torch.tensor([g.window_frames, g.window_frames - 6][:n_ex], dtype=torch.int64)
    stream = ProgramSpec(
        "encoder_streaming",
        StreamingEncoderProgram(model).eval(),
        (xs, xs_lens, *(s.zeros() for s in state_specs)),
        ["x", "x_lens", *names],
        ["encoder_out", "encoder_out_lens", *(f"new_{n}" for n in names)],
        # ``forward(x, x_lens, *states)``: torch.export keys the varargs' shapes by "states"
        {
            "x": axes({0: batch}),
            "x_lens": axes({0: batch}),
            "states": tuple(axes({s.batch_axis: batch}) for s in state_specs),
        }
        if onnx
        else None,
        {"x": {0: "N"}, "x_lens": {0: "N"}, **{s.name: {s.batch_axis: "N"} for s in state_specs}}
        if onnx
        else {},
        state_specs,
    )

    # predictor / joiner: dynamic N on both targets (beam search batches its hypotheses)
    hyp = torch.export.Dim("N", min=1, max=1024)
    y = torch.tensor(
        [[-1] * (ctx - 1) + [model.blank_id], list(range(1, ctx + 1))], dtype=torch.int64
    )
    pred = ProgramSpec(
        "predictor",
        PredictorProgram(model).eval(),
        (y,),
        ["y"],
        ["predictor_out"],
        {"y": {0: hyp}},
        {"y": {0: "N"}},
    )
    join = ProgramSpec(
        "joiner",
        JoinerProgram(model).eval(),
        (torch.randn(2, j, generator=gen), torch.randn(2, j, generator=gen)),
        ["encoder_out", "predictor_out"],
        ["logits"],
        {"encoder_out": {0: hyp}, "predictor_out": {0: hyp}},
        {"encoder_out": {0: "N"}, "predictor_out": {0: "N"}},
    )
    specs = {s.name: s for s in (enc, stream, pred, join)}
    assert tuple(specs) == PROGRAMS
    return specs


# --------------------------------------------------------------------------------------------
# export-time rewrites
# --------------------------------------------------------------------------------------------
class DecomposedLayerNorm(nn.Module):
    """``nn.LayerNorm`` over the last axis written as linear + elementwise ops.

    The mean and variance over ``D`` are a linear map with a constant ``(1, D)`` weight of
    ``1 / D``, so the whole norm lowers to XNNPACK (which has no LayerNorm and only 4-D means) for
    any leading shape, dynamic ones included. Same arithmetic as ``F.layer_norm`` (biased
    variance, ``eps`` inside the square root); differences are float rounding (~1e-7).
    """

    def __init__(self, ln: nn.LayerNorm) -> None:
        super().__init__()
        if len(ln.normalized_shape) != 1:
            raise ValueError("DecomposedLayerNorm handles a norm over the last axis only")
        d = ln.normalized_shape[0]
        self.eps = ln.eps
        self.weight = ln.weight
        self.bias = ln.bias
        self.register_buffer("avg", torch.full((1, d), 1.0 / d), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        d = x - F.linear(x, self.avg)
        y = d * torch.rsqrt(F.linear(d * d, self.avg) + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


def xnnpack_friendly(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every ``nn.LayerNorm`` replaced by :class:`DecomposedLayerNorm`."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(parent, name, DecomposedLayerNorm(child))
    return module


def for_target(spec: ProgramSpec, target: Target) -> ProgramSpec:
    """The spec with its module rewritten for ``target`` (ExecuTorch: :func:`xnnpack_friendly`)."""
    if target != "executorch":
        return spec
    return dataclasses.replace(spec, module=xnnpack_friendly(spec.module).eval())
