"""RNN-T model: encoder + stateless predictor + joiner, with an auxiliary CTC head.

Follows icefall's ``zipformer/model.py`` layout: the submodules are injected and each head has
its own method (:meth:`Transducer.transducer_lattice`, :meth:`Transducer.forward_ctc`).

Shapes: N batch, T encoder frames, S target tokens, V vocab, D encoder width,
P predictor width, J joiner width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrq.config import LossConfig
from asrq.models.base import EncoderCtcModel


class Predictor(nn.Module):
    """Stateless predictor (Ghodsi et al. 2020; icefall ``decoder.py``): embedding of the last
    ``context_size`` tokens, mixed by a grouped 1-D conv, then ReLU. ``(N, U)`` -> ``(N, U, P)``."""

    def __init__(self, vocab_size: int, d_model: int, blank_id: int, context_size: int) -> None:
        super().__init__()
        self.blank_id = blank_id
        self.context_size = context_size
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, d_model)
        if context_size > 1:
            self.conv = nn.Conv1d(
                d_model, d_model, context_size, groups=max(1, d_model // 4), bias=False
            )
        else:
            self.conv = None

    def forward(self, y: Tensor, need_pad: bool = True) -> Tensor:
        """y: (N, U) token ids (negative ids = padding). With ``need_pad`` the sequence is
        left-padded so output ``u`` sees tokens ``u-ctx+1..u``; without it ``U >= context_size``
        and the output has ``U - context_size + 1`` frames (decoding: U == context_size)."""
        emb = self.embedding(y.clamp(min=0)) * (y >= 0).unsqueeze(-1)  # (N, U, P)
        if self.conv is not None:
            emb = emb.transpose(1, 2)
            if need_pad:
                emb = F.pad(emb, (self.context_size - 1, 0))
            emb = self.conv(emb).transpose(1, 2)
        return F.relu(emb)


class Joiner(nn.Module):
    """``output_linear(tanh(encoder_proj(enc) + decoder_proj(pred)))`` -> logits ``(..., V)``."""

    def __init__(
        self, encoder_dim: int, predictor_dim: int, joiner_dim: int, vocab_size: int
    ) -> None:
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, joiner_dim)
        self.decoder_proj = nn.Linear(predictor_dim, joiner_dim)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(self, enc: Tensor, pred: Tensor, project_input: bool = True) -> Tensor:
        """enc: (..., D or J), pred: (..., P or J) broadcastable -> (..., V)."""
        if project_input:
            enc, pred = self.encoder_proj(enc), self.decoder_proj(pred)
        return self.output_linear(torch.tanh(enc + pred))


def pad_targets(
    ys: list[list[int]], pad: int, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """list of token lists -> (N, S) int64 padded with ``pad``, lengths (N,)."""
    lens = torch.tensor([len(y) for y in ys], dtype=torch.int64, device=device)
    out = torch.full(
        (len(ys), max(1, int(lens.max()) if len(ys) else 1)), pad, dtype=torch.int64, device=device
    )
    for i, y in enumerate(ys):
        if y:
            out[i, : len(y)] = torch.tensor(y, dtype=torch.int64, device=device)
    return out, lens


class Transducer(EncoderCtcModel):
    """Encoder + predictor + joiner (+ CTC head).

    Args:
        encoder: maps ``(x (N, T, F), x_lens, chunk_size, left_chunks)`` to ``((N, T', D), (N,))``;
            has ``output_dim``.
        predictor, joiner: see :class:`Predictor`, :class:`Joiner`.
        vocab_size, blank_id: token inventory (blank is also the predictor's start symbol).
        ctc_head: add a CTC projection ``D -> V`` trained as an auxiliary loss.
    """

    head = "rnnt"

    def __init__(
        self,
        encoder: nn.Module,
        predictor: Predictor,
        joiner: Joiner,
        vocab_size: int,
        blank_id: int = 0,
        ctc_head: bool = True,
    ) -> None:
        super().__init__(encoder, vocab_size, blank_id)
        self.predictor = predictor
        self.joiner = joiner
        d, p = encoder.output_dim, predictor.embedding.embedding_dim
        # "simple" (trivial-joiner) projections that give the pruning bounds
        self.simple_am_proj = nn.Linear(d, vocab_size)
        self.simple_lm_proj = nn.Linear(p, vocab_size)
        self.add_ctc(ctc_head)

    def forward_heads(
        self,
        enc: Tensor,
        enc_lens: Tensor,
        targets: Tensor,
        target_lens: Tensor,
        loss_cfg: LossConfig,
    ) -> dict[str, Tensor]:
        """``simple``, ``pruned`` (RNN-T) and ``ctc`` (zero when the model has no CTC head or its
        weight is 0), each summed over the batch."""
        lat = self.transducer_lattice(enc, enc_lens, targets, target_lens, loss_cfg)
        if self.ctc is not None and loss_cfg.ctc_weight > 0:
            ctc = self.forward_ctc(enc, enc_lens, targets, target_lens)
        else:
            ctc = torch.zeros((), device=enc.device)
        return {"simple": lat.simple, "pruned": lat.pruned, "ctc": ctc}

    # ---- heads ------------------------------------------------------------------------------
    def transducer_lattice(
        self,
        enc: Tensor,
        enc_lens: Tensor,
        targets: Tensor,
        target_lens: Tensor,
        loss_cfg: LossConfig,
        ranges: Tensor | None = None,
    ) -> TransducerLattice:
        """The RNN-T losses (summed over the batch) with the joiner logits on the lattice they
        were taken over: ``pruned`` loss type: the simple loss and k2's pruned RNN-T loss
        (asrq.losses.rnnt); ``full``: zero and the full torchaudio rnnt_loss over the whole
        (T, S + 1) lattice. enc: (N, T, D); targets: (N, S) padded. ``ranges`` (N, T, R):
        prune with these instead of the model's own (pruned loss only; the simple loss is then
        computed without the gradients that would give the ranges)."""
        from asrq.losses import rnnt as L

        n = enc.shape[0]
        blank = self.blank_id
        sos = torch.full((n, 1), blank, dtype=torch.int64, device=enc.device)
        sos_y = torch.cat([sos, targets.clamp(min=0)], dim=1)  # (N, S + 1)
        # padding after each sequence is masked by the boundary; use blank ids there
        s_idx = torch.arange(targets.shape[1], device=enc.device)[None]
        y = torch.where(s_idx < target_lens[:, None], targets, torch.full_like(targets, blank))
        pred = self.predictor(sos_y)  # (N, S + 1, P)

        if loss_cfg.rnnt_type == "full":
            logits = self.joiner(enc[:, :, None, :], pred[:, None, :, :])  # (N, T, S + 1, V)
            loss = L.torchaudio_rnnt_loss(
                logits, y, enc_lens, target_lens, blank=blank, reduction="sum"
            )
            lattice_s = torch.arange(pred.shape[1], device=enc.device).expand(n, enc.shape[1], -1)
            return TransducerLattice(torch.zeros((), device=enc.device), loss, logits, lattice_s)

        boundary = torch.zeros(n, 4, dtype=torch.int64, device=enc.device)
        boundary[:, 2] = target_lens
        boundary[:, 3] = enc_lens
        lm = self.simple_lm_proj(pred)  # (N, S + 1, V)
        am = self.simple_am_proj(enc)  # (N, T, V)
        kw: dict[str, Any] = dict(
            lm=lm.float(),
            am=am.float(),
            symbols=y,
            termination_symbol=blank,
            lm_only_scale=loss_cfg.lm_only_scale,
            am_only_scale=loss_cfg.am_only_scale,
            boundary=boundary,
            reduction="sum",
        )
        if ranges is None:
            simple_loss, (px_grad, py_grad) = L.rnnt_loss_smoothed(**kw, return_grad=True)
            ranges = L.get_rnnt_prune_ranges(px_grad, py_grad, boundary, loss_cfg.prune_range)
        else:
            simple_loss = L.rnnt_loss_smoothed(**kw)
        am_p, lm_p = L.do_rnnt_pruning(
            self.joiner.encoder_proj(enc), self.joiner.decoder_proj(pred), ranges
        )
        logits = self.joiner(am_p, lm_p, project_input=False)  # (N, T, R, V)
        pruned_loss = L.rnnt_loss_pruned(
            logits.float(), y, ranges, termination_symbol=blank, boundary=boundary, reduction="sum"
        )
        return TransducerLattice(simple_loss, pruned_loss, logits, ranges)


@dataclass
class TransducerLattice:
    """What :meth:`Transducer.transducer_lattice` computed: the ``simple`` and ``pruned`` losses
    (summed; ``simple`` is zero for the full loss), the joiner ``logits`` (N, T, R, V) on the
    lattice and ``lattice_s`` (N, T, R) int64, the symbol position of each lattice node (the
    pruning ranges; ``arange(S + 1)`` for the full loss)."""

    simple: Tensor
    pruned: Tensor
    logits: Tensor
    lattice_s: Tensor
