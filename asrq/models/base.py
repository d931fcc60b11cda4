"""What every model head shares: the encoder and a CTC projection on its output.

:class:`EncoderCtcModel` is the base of :class:`asrq.models.transducer.Transducer` (``rnnt``,
CTC optional) and :class:`asrq.models.ctc_attention.CtcAttentionModel` (``ctc_attention``).
A head class sets ``head`` to its name (the key of the head tables: ``asrq.models.HEADS``,
``asrq.decode.heads.DECODERS``) and adds its own forward.

Shapes: N batch, T fbank frames, F fbank bins, T' encoder frames, S target tokens, D encoder
width, V vocab.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from asrq.config import LossConfig


def ctc_loss(
    log_probs: Tensor, enc_lens: Tensor, targets: Tensor, target_lens: Tensor, blank: int
) -> Tensor:
    """Summed CTC loss: log_probs (N, T', V), enc_lens (N,), targets (N, S) padded (any pad),
    target_lens (N,)."""
    return F.ctc_loss(
        log_probs.float().transpose(0, 1),
        targets.clamp(min=0),
        enc_lens,
        target_lens,
        blank=blank,
        reduction="sum",
        zero_infinity=True,
    )


class EncoderCtcModel(nn.Module):
    """Encoder + (optional) CTC projection ``D -> V`` with dropout 0.1.

    Args:
        encoder: maps ``(x (N, T, F), x_lens, chunk_size, left_chunks)`` to ``((N, T', D), (N,))``;
            has ``output_dim``, ``init_states`` and ``streaming_forward``.
        vocab_size, blank_id: token inventory (blank is CTC's).
    """

    #: the model head's name (a key of the head tables)
    head: ClassVar[str]

    ctc: nn.Module | None

    def __init__(self, encoder: nn.Module, vocab_size: int, blank_id: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.vocab_size = vocab_size
        self.blank_id = blank_id

    def add_ctc(self, ctc_head: bool = True) -> None:
        """Build the CTC projection (None without ``ctc_head``). A head class calls it after
        building its own modules, so parameter order and initialisation stay those of the
        models' first versions (checkpointed optimizer states index parameters by order)."""
        d = self.encoder.output_dim
        self.ctc = (
            nn.Sequential(nn.Dropout(0.1), nn.Linear(d, self.vocab_size)) if ctc_head else None
        )

    def forward_encoder(
        self, x: Tensor, x_lens: Tensor, chunk_size: int = -1, left_chunks: int = -1
    ) -> tuple[Tensor, Tensor]:
        """x: (N, T, F) -> (N, T', D), (N,)."""
        return self.encoder(x, x_lens, chunk_size=chunk_size, left_chunks=left_chunks)

    def forward(
        self,
        x: Tensor,
        x_lens: Tensor,
        targets: Tensor,
        target_lens: Tensor,
        loss_cfg: LossConfig,
        chunk_size: int = -1,
        left_chunks: int = -1,
    ) -> dict[str, Tensor]:
        """Training forward: x (N, T, F) fbank; targets (N, S) token ids (padded, e.g. -1).

        Returns the head's losses (:meth:`forward_heads`), each summed over the batch, and
        ``frames`` (encoder frames); ``asrq.train.loop.combine_losses`` weighs them."""
        enc, enc_lens = self.forward_encoder(x, x_lens, chunk_size, left_chunks)
        return {
            **self.forward_heads(enc, enc_lens, targets, target_lens, loss_cfg),
            "frames": enc_lens.sum(),
        }

    def forward_heads(
        self,
        enc: Tensor,
        enc_lens: Tensor,
        targets: Tensor,
        target_lens: Tensor,
        loss_cfg: LossConfig,
    ) -> dict[str, Tensor]:
        """The head's training losses from the encoder output enc (N, T', D), enc_lens (N,)."""
        raise NotImplementedError

    def ctc_log_probs(self, enc: Tensor) -> Tensor:
        """(N, T', D) -> (N, T', V) log-probabilities."""
        if self.ctc is None:
            raise RuntimeError("this model has no CTC head (model.rnnt.ctc_head: false)")
        return self.ctc(enc).log_softmax(dim=-1)

    def forward_ctc(
        self, enc: Tensor, enc_lens: Tensor, targets: Tensor, target_lens: Tensor
    ) -> Tensor:
        """Summed CTC loss. enc: (N, T', D); targets: (N, S) padded; lengths (N,)."""
        return ctc_loss(self.ctc_log_probs(enc), enc_lens, targets, target_lens, self.blank_id)
