"""The eager PyTorch model behind the :class:`~asrq.decode.interface.RnntComponents` interface.

Inputs may be on any device; they are moved to the model's device and the outputs stay there
(CPU for a CPU model, as the interface asks; a CUDA model used by the training loop's WER
evaluation keeps its tensors on the GPU).
"""

from __future__ import annotations

import torch
from torch import Tensor

from asrq.models.base import EncoderCtcModel
from asrq.models.transducer import Transducer


class EagerComponents:
    """What the eager-model components of every head share: the model (not copied; put it in
    eval mode), the token inventory, the streaming geometry and the raw encoder calls.

    Args:
        model: a model of :mod:`asrq.models` (:class:`~asrq.models.base.EncoderCtcModel`).
        chunk_frames: C, encoder frames per streaming chunk.
        left_frames: L, encoder frames of left context kept in the streaming attention cache.
    """

    def __init__(self, model: EncoderCtcModel, chunk_frames: int, left_frames: int) -> None:
        self.model = model
        self.vocab_size = int(model.vocab_size)
        self.blank_id = int(model.blank_id)
        self.chunk_frames = int(chunk_frames)
        self.left_frames = int(left_frames)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def init_states(self, batch_size: int) -> list[Tensor]:
        """The encoder's zero streaming states (its ``state_specs``; Conformer: attn_cache,
        conv_cache, processed)."""
        return self.model.encoder.init_states(batch_size, self.left_frames, device=self.device)

    def run_encoder(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Full context: x (N, T, F), x_lens (N,) -> (N, T', D), (N,) on the model's device."""
        dev = self.device
        return self.model.encoder(x.to(dev), x_lens.to(dev))

    def run_encoder_chunk(
        self, x: Tensor, x_lens: Tensor, states: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Streaming step: x (N, 4C + 3, F), x_lens (N,) valid fbank frames -> (N, C, D), valid
        frames (N,), new states."""
        dev = self.device
        return self.model.encoder.streaming_forward(x.to(dev), x_lens.to(dev), states)


class TorchRnnt(EagerComponents):
    """:class:`RnntComponents` over an eager :class:`Transducer` (the model is not copied).

    Args:
        model: the RNN-T model (put it in eval mode: :func:`asrq.decode.evaluate.evaluate_model`
            does).
        chunk_frames: C, encoder frames per streaming chunk.
        left_frames: L, encoder frames of left context kept in the streaming attention cache.

    Besides the interface it offers :meth:`ctc_log_probs` / :meth:`ctc_log_probs_chunk` for the
    CTC head (full context and streaming).
    """

    model: Transducer

    def __init__(self, model: Transducer, chunk_frames: int, left_frames: int) -> None:
        super().__init__(model, chunk_frames, left_frames)
        self.context_size = int(model.predictor.context_size)

    # ---- encoder ----------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Full context: x (N, T, F), x_lens (N,) -> (N, T', J), (N,)."""
        enc, lens = self.run_encoder(x, x_lens)
        return self.model.joiner.encoder_proj(enc), lens

    @torch.inference_mode()
    def encode_chunk(
        self, x: Tensor, x_lens: Tensor, states: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """x (N, 4C + 3, F), x_lens (N,) valid fbank frames -> (N, C, J), valid frames (N,),
        states."""
        enc, lens, states = self.run_encoder_chunk(x, x_lens, states)
        return self.model.joiner.encoder_proj(enc), lens, states

    # ---- predictor / joiner -----------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, context: Tensor) -> Tensor:
        """(N, context_size) int64 (negative ids = padding, zero embedding) -> (N, J)."""
        pred = self.model.predictor(context.to(self.device), need_pad=False)  # (N, 1, P)
        return self.model.joiner.decoder_proj(pred[:, -1])

    @torch.inference_mode()
    def join(self, enc: Tensor, pred: Tensor) -> Tensor:
        """(N, J), (N, J) -> logits (N, V)."""
        return self.model.joiner(enc, pred, project_input=False)

    # ---- CTC head (not part of the interface) -----------------------------------------------
    @torch.inference_mode()
    def ctc_log_probs(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Full context: x (N, T, F) -> CTC log-probs (N, T', V), lengths (N,)."""
        enc, lens = self.run_encoder(x, x_lens)
        return self.model.ctc_log_probs(enc), lens

    @torch.inference_mode()
    def ctc_log_probs_chunk(
        self, x: Tensor, x_lens: Tensor, states: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Streaming step for the CTC head: like :meth:`encode_chunk`, returning (N, C, V)
        log-probs."""
        enc, lens, states = self.run_encoder_chunk(x, x_lens, states)
        return self.model.ctc_log_probs(enc), lens, states
