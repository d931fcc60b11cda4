"""What every head's export is made of: a :class:`ProgramSpec` per program (module, example
inputs, names, dynamic shapes), the encoder's streaming geometry, and the two encoder programs
every head shares the shape contract of (:func:`encoder_specs`).

Shape contract of the full-context ``encoder``: ``T = 4k + 3`` with ``k >= 2`` (then
``T' = k`` exactly; :func:`asrq.runtime.model_dir.encoder_input_frames` pads any length to it
with ``LOG_EPSILON`` frames, which the lengths mask out). ``torch.export`` cannot prove its
guards for an arbitrary ``T`` through the two stride-2 convolutions, but it can for ``T = 4k + 3``.

Per backend (:data:`asrq.runtime.backends.BACKENDS`) the batch axis differs: where the
encoders are batched (ONNX) ``N`` is dynamic in every program; otherwise (ExecuTorch, XNNPACK)
both encoders take ``N = 1`` and runtimes loop over the batch. Memory-planned backends bound
every dynamic axis (``max_encoder_steps`` for the encoder's time axis).

The streaming states are whatever the encoder declares with ``state_specs`` (see
:mod:`asrq.models.states`): their names become the streaming program's input names
(``new_<name>`` for the outputs) and travel in the export metadata with their shapes, dtypes
and batch axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from asrq.models.states import StateSpec
from asrq.runtime.backends import get_backend
from asrq.runtime.model_dir import MIN_ENCODER_STEPS

#: A backend name of :data:`asrq.runtime.backends.BACKENDS`.
Target = str

#: Default longest utterance a bounded full-context encoder is memory-planned for
#: (``4 * 750 + 3`` fbank frames = 30 s); unbounded backends (ONNX) take any length.
DEFAULT_MAX_ENCODER_STEPS = 750
#: Largest dynamic batch of a batched program.
MAX_BATCH = 1024


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


def _axes(d: dict[int, Any]) -> dict[int, Any] | None:
    d = {k: v for k, v in d.items() if v is not None}
    return d or None


def encoder_specs(
    model: nn.Module,
    full: nn.Module,
    streaming: nn.Module,
    extra_outputs: list[str],
    chunk_frames: int,
    left_frames: int,
    target: Target,
    max_encoder_steps: int,
    example_steps: int,
    gen: torch.Generator,
) -> tuple[ProgramSpec, ProgramSpec]:
    """The ``encoder`` and ``encoder_streaming`` specs of a head whose encoder programs are
    ``full(x, x_lens) -> (encoder_out, encoder_out_lens, *extra_outputs)`` and
    ``streaming(x, x_lens, *states) -> (..., *new_states)``, traced at ``example_steps``
    encoder frames; the example inputs are drawn from ``gen``."""
    g = streaming_geometry(model, chunk_frames, left_frames)
    b = get_backend(target)
    f = g.feature_dim
    n_ex = 2 if b.batched_encoders else 1
    batch = torch.export.Dim("N", min=1, max=MAX_BATCH) if b.batched_encoders else None
    steps = torch.export.Dim(
        "steps", min=MIN_ENCODER_STEPS, max=max_encoder_steps if b.bounded_shapes else None
    )
    k = example_steps
    x = torch.randn(n_ex, 4 * k + 3, f, generator=gen)
    x_lens = torch.tensor([4 * k + 3, 4 * k - 5][:n_ex], dtype=torch.int64)
    labels = (
        {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}}
        if b.batched_encoders
        else {"x": {1: "T"}, "x_lens": {}}
    )
    enc = ProgramSpec(
        "encoder",
        full.eval(),
        (x, x_lens),
        ["x", "x_lens"],
        ["encoder_out", "encoder_out_lens", *extra_outputs],
        {"x": _axes({0: batch, 1: 4 * steps + 3}), "x_lens": _axes({0: batch})},
        labels,
    )

    state_specs = [s.with_batch(n_ex) for s in g.states]
    names = [s.name for s in state_specs]
    xs = torch.randn(n_ex, g.window_frames, f, generator=gen)
    xs_lens = torch.tensor([g.window_frames, g.window_frames - 6][:n_ex], dtype=torch.int64)
    stream = ProgramSpec(
        "encoder_streaming",
        streaming.eval(),
        (xs, xs_lens, *(s.zeros() for s in state_specs)),
        ["x", "x_lens", *names],
        ["encoder_out", "encoder_out_lens", *extra_outputs, *(f"new_{n}" for n in names)],
        # ``forward(x, x_lens, *states)``: torch.export keys the varargs' shapes by "states"
        {
            "x": _axes({0: batch}),
            "x_lens": _axes({0: batch}),
            "states": tuple(_axes({s.batch_axis: batch}) for s in state_specs),
        }
        if b.batched_encoders
        else None,
        {"x": {0: "N"}, "x_lens": {0: "N"}, **{s.name: {s.batch_axis: "N"} for s in state_specs}}
        if b.batched_encoders
        else {},
        state_specs,
    )
    return enc, stream
