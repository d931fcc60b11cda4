"""The hybrid CTC / attention head's export: three programs, its metadata and its parity
cases. :class:`CtcAttentionExport` is this head's entry in :data:`asrq.export.heads.EXPORT_HEADS`.

- ``encoder``: x (N, T, F) f32, x_lens (N,) i64 -> encoder_out (N, T', D),
  encoder_out_lens (N,) i64, ctc_log_probs (N, T', V);
- ``encoder_streaming``: x (N, 4C+3, F), x_lens (N,), then the encoder's streaming states in
  the order of ``encoder.state_specs`` -> encoder_out (N, C, D), encoder_out_lens (N,),
  ctc_log_probs (N, C, V), ``new_<state>`` for each state;
- ``decoder``: encoder_out (N, T', D), encoder_out_lens (N,) i64, hyps (N, U) i64 (``<sos>`` +
  tokens), hyps_lens (N,) i64 -> log_probs (N, U, V).

The encoders follow every head's contract (:mod:`asrq.export.spec`). On a memory-planned backend
(ExecuTorch) the decoder is planned for at most :data:`MAX_DECODER_HYPS` hypotheses of
:data:`MAX_DECODER_TOKENS` steps over the full-context encoder's longest output; the runtime
splits larger n-best lists.
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
from asrq.runtime.backends import BACKENDS, get_backend
from asrq.runtime.ctc_attention import PROGRAMS

#: Decoder bounds on memory-planned backends (ExecuTorch); ONNX has none.
MAX_DECODER_HYPS = 10
MAX_DECODER_TOKENS = 200


class CtcEncoderProgram(nn.Module):
    """Full-context encoder + CTC head: (N, T, F), (N,) -> (N, T', D), (N,), (N, T', V)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.ctc = model.ctc

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        enc, lens = self.encoder(x, x_lens)
        return enc, lens, self.ctc(enc).log_softmax(dim=-1)


class CtcStreamingEncoderProgram(nn.Module):
    """One chunk of the streaming encoder + CTC head; the states are positional tensors in the
    order of ``encoder.state_specs``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.ctc = model.ctc

    def forward(self, x: Tensor, x_lens: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        enc, lens, new_states = self.encoder.streaming_forward(x, x_lens, list(states))
        return (enc, lens, self.ctc(enc).log_softmax(dim=-1), *new_states)


class AttentionDecoderProgram(nn.Module):
    """Attention decoder log-probs for rescoring: (N, T', D), (N,), (N, U), (N,) -> (N, U, V)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(
        self, encoder_out: Tensor, encoder_out_lens: Tensor, hyps: Tensor, hyps_lens: Tensor
    ) -> Tensor:
        return self.decoder(encoder_out, encoder_out_lens, hyps, hyps_lens).log_softmax(dim=-1)


def program_specs(
    model: nn.Module,
    chunk_frames: int,
    left_frames: int,
    target: Target,
    max_encoder_steps: int = DEFAULT_MAX_ENCODER_STEPS,
) -> dict[str, ProgramSpec]:
    """The three :class:`ProgramSpec` s of an eval-mode CTC / attention model for ``target``."""
    gen = torch.Generator().manual_seed(0)
    k_ex = 12
    enc, stream = encoder_specs(
        model,
        CtcEncoderProgram(model),
        CtcStreamingEncoderProgram(model),
        ["ctc_log_probs"],
        chunk_frames,
        left_frames,
        target,
        max_encoder_steps,
        example_steps=k_ex,
        gen=gen,
    )
    # decoder: N hypotheses, T' encoder frames, U steps, all dynamic (bounded when memory-planned)
    bounded = get_backend(target).bounded_shapes
    hyp_n = torch.export.Dim("N", min=1, max=MAX_DECODER_HYPS if bounded else MAX_BATCH)
    t_dim = torch.export.Dim("T", min=1, max=max_encoder_steps if bounded else None)
    u_dim = torch.export.Dim("U", min=1, max=MAX_DECODER_TOKENS if bounded else None)
    d, v = model.encoder.output_dim, model.vocab_size
    hyps = torch.randint(0, v, (2, 5), generator=gen)
    hyps[:, 0] = model.sos_id
    dec = ProgramSpec(
        "decoder",
        AttentionDecoderProgram(model).eval(),
        (
            torch.randn(2, k_ex, d, generator=gen),
            torch.tensor([k_ex, k_ex - 3]),
            hyps,
            torch.tensor([5, 3]),
        ),
        ["encoder_out", "encoder_out_lens", "hyps", "hyps_lens"],
        ["log_probs"],
        {
            "encoder_out": {0: hyp_n, 1: t_dim},
            "encoder_out_lens": {0: hyp_n},
            "hyps": {0: hyp_n, 1: u_dim},
            "hyps_lens": {0: hyp_n},
        },
        {
            "encoder_out": {0: "N", 1: "T"},
            "encoder_out_lens": {0: "N"},
            "hyps": {0: "N", 1: "U"},
            "hyps_lens": {0: "N"},
        },
    )
    return {s.name: s for s in (enc, stream, dec)}


def decoder_cases(
    spec: ProgramSpec, vocab_size: int, sos: int, batch_max: int, seed: int = 0
) -> list[tuple[str, tuple[Tensor, ...]]]:
    """Decoder inputs at several (N, T', U), with padded encoder frames and hypotheses."""
    g = torch.Generator().manual_seed(seed)
    d = spec.example_inputs[0].shape[-1]
    cases = []
    for n, t, u in ((2, 12, 5), (1, 3, 1), (min(5, batch_max), 40, 17)):
        enc = torch.randn(n, t, d, generator=g)
        enc_lens = torch.randint(1, t + 1, (n,), generator=g)
        enc_lens[0] = t
        hyps = torch.randint(0, vocab_size, (n, u), generator=g)
        hyps[:, 0] = sos
        hyps_lens = torch.randint(1, u + 1, (n,), generator=g)
        hyps_lens[0] = u
        cases.append((f"N={n} T={t} U={u}", (enc, enc_lens, hyps, hyps_lens)))
    return cases


class CtcAttentionExport:
    """The CTC / attention entry of :data:`asrq.export.heads.EXPORT_HEADS`."""

    programs = PROGRAMS
    #: integer ``metadata["model"]`` entries stored in every ``.pte`` as constant methods
    constant_keys = (
        "vocab_size",
        "blank_id",
        "sos_id",
        "eos_id",
        "subsampling_factor",
        "chunk_frames",
        "left_frames",
        "feature_dim",
        "encoder_dim",
    )
    #: ``metadata["model"]`` entries stored in every ONNX file's metadata_props
    file_keys = (*constant_keys, "states")

    program_specs = staticmethod(program_specs)

    def model_metadata(
        self, model: nn.Module, g: StreamingGeometry, max_encoder_steps: int
    ) -> dict[str, Any]:
        """This head's ``metadata["model"]`` entries (beside the shared ones)."""
        bounded = [b for b in BACKENDS.values() if b.bounded_shapes]
        return {
            "sos_id": int(model.sos_id),
            "eos_id": int(model.eos_id),
            "encoder_dim": int(model.encoder.output_dim),
            "decoder_layers": len(model.decoder.layers),
            "decoder_max_hyps": {b.name: MAX_DECODER_HYPS for b in bounded},
            "decoder_max_tokens": {b.name: MAX_DECODER_TOKENS for b in bounded},
            "decoder_max_frames": {b.name: max_encoder_steps for b in bounded},
        }

    def parity_cases(
        self, model: nn.Module, specs: dict[str, ProgramSpec], backend: str
    ) -> dict[str, list[P.Case]]:
        """Inputs for this head's own programs (the encoders' cases are shared)."""
        batch_max = MAX_DECODER_HYPS if get_backend(backend).bounded_shapes else MAX_BATCH
        return {
            "decoder": decoder_cases(specs["decoder"], model.vocab_size, model.sos_id, batch_max)
        }
