"""The RNN-T head's export: four deployable programs with tensor-only signatures (STYLE.md
point 8; icefall's ``OnnxEncoder/OnnxDecoder/OnnxJoiner``, ExecuTorch's ``emformer_rnnt``
example), its metadata and its parity cases. :class:`RnntExport` is this head's entry in
:data:`asrq.export.heads.EXPORT_HEADS`.

- ``encoder``: x (N, T, F) f32, x_lens (N,) i64 -> encoder_out (N, T', J),
  encoder_out_lens (N,) i64;
- ``encoder_streaming``: x (N, 4C+3, F), x_lens (N,), the encoder's states (conformer:
  attn_cache, conv_cache, processed) -> encoder_out (N, C, J), out_lens (N,), ``new_<state>``...;
- ``predictor``: y (N, context_size) i64 (-1 = padding) -> predictor_out (N, J);
- ``joiner``: encoder_out (N, J), predictor_out (N, J) -> logits (N, V).

Encoder and predictor outputs are already projected to the joiner width ``J`` (``encoder_proj`` /
``decoder_proj``), so the joiner program is only ``output_linear(tanh(enc + pred))``. The
encoders' shape contract and batch rules are those of every head (:mod:`asrq.export.spec`); the
predictor and joiner keep a dynamic ``N`` on every backend (beam search batches hypotheses).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from asrq.export import parity as P
from asrq.export.spec import (
    DEFAULT_MAX_ENCODER_STEPS,
    MAX_BATCH,
    ProgramSpec,
    StreamingGeometry,
    Target,
    encoder_specs,
)
from asrq.runtime.rnnt import PROGRAMS


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
    """Stateless predictor on the last ``context_size`` tokens + ``decoder_proj``:
    (N, ctx) -> (N, J)."""

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


def program_specs(
    model: nn.Module,
    chunk_frames: int,
    left_frames: int,
    target: Target,
    max_encoder_steps: int = DEFAULT_MAX_ENCODER_STEPS,
) -> dict[str, ProgramSpec]:
    """The four :class:`ProgramSpec` s of an eval-mode RNN-T for ``target`` (see the module doc).

    ``max_encoder_steps`` bounds ``T' = (T - 3) / 4`` of the full-context encoder on bounded
    backends (ExecuTorch plans memory for it; ONNX ignores it).
    """
    gen = torch.Generator().manual_seed(0)
    # traced length: 40 encoder frames, more than one block of the stateformer's blockwise SSM
    # (a traced block count of 1 let the exporter treat that axis as size 1)
    enc, stream = encoder_specs(
        model,
        EncoderProgram(model),
        StreamingEncoderProgram(model),
        [],
        chunk_frames,
        left_frames,
        target,
        max_encoder_steps,
        example_steps=40,
        gen=gen,
    )
    j = model.joiner.encoder_proj.out_features
    ctx = model.predictor.context_size
    # predictor / joiner: dynamic N on every backend (beam search batches its hypotheses)
    hyp = torch.export.Dim("N", min=1, max=MAX_BATCH)
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
# parity cases
# --------------------------------------------------------------------------------------------
def predictor_cases(
    spec: ProgramSpec, vocab_size: int, seed: int = 0
) -> list[tuple[str, tuple[Tensor, ...]]]:
    g = torch.Generator().manual_seed(seed)
    ctx = spec.example_inputs[0].shape[1]
    cases = []
    for n in (1, 5):
        y = torch.randint(0, vocab_size, (n, ctx), generator=g)
        y[0, : ctx - 1] = -1  # the start context: padding + blank
        cases.append((f"N={n}", (y,)))
    return cases


def joiner_cases(spec: ProgramSpec, seed: int = 0) -> list[tuple[str, tuple[Tensor, ...]]]:
    g = torch.Generator().manual_seed(seed)
    j = spec.example_inputs[0].shape[1]
    return [
        (f"N={n}", (torch.randn(n, j, generator=g), torch.randn(n, j, generator=g))) for n in (1, 5)
    ]


# --------------------------------------------------------------------------------------------
# the head's entry
# --------------------------------------------------------------------------------------------
class RnntExport:
    """The RNN-T entry of :data:`asrq.export.heads.EXPORT_HEADS`."""

    programs = PROGRAMS
    #: integer ``metadata["model"]`` entries stored in every ``.pte`` as constant methods
    constant_keys = (
        "vocab_size",
        "blank_id",
        "context_size",
        "subsampling_factor",
        "chunk_frames",
        "left_frames",
        "feature_dim",
        "joiner_dim",
    )
    #: ``metadata["model"]`` entries stored in every ONNX file's metadata_props
    file_keys = (*constant_keys, "state_shapes", "states")

    program_specs = staticmethod(program_specs)

    def model_metadata(
        self, model: nn.Module, g: StreamingGeometry, max_encoder_steps: int
    ) -> dict[str, Any]:
        """This head's ``metadata["model"]`` entries (beside the shared ones)."""
        return {
            "context_size": int(model.predictor.context_size),
            "encoder_dim": g.d_model,
            "joiner_dim": int(model.joiner.encoder_proj.out_features),
            "state_shapes": g.state_shapes(1),
        }

    def parity_cases(
        self, model: nn.Module, specs: dict[str, ProgramSpec], backend: str
    ) -> dict[str, list[P.Case]]:
        """Inputs for this head's own programs (the encoders' cases are shared)."""
        return {
            "predictor": predictor_cases(specs["predictor"], model.vocab_size),
            "joiner": joiner_cases(specs["joiner"]),
        }
