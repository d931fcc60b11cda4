"""Hybrid CTC / attention model (Watanabe et al. 2017; WeNet U2/U2++, Zhang et al. 2020/2021).

One encoder feeds two heads:

- a CTC projection ``D -> V`` (streaming recognition, and the n-best of CTC prefix beam search),
- an autoregressive transformer decoder (:class:`AttentionDecoder`) that rescores the n-best
  (:mod:`asrq.decode.ctc_attention`).

Training loss (summed over the batch, as :class:`asrq.models.transducer.Transducer` returns
them; the loop combines them in ``asrq.train.loop.combine_losses``)::

    loss = lambda * ctc + (1 - lambda) * att        # lambda = train.loss.ctc_weight

``att`` is the label-smoothed cross-entropy of the decoder fed ``<sos> y1 .. yS`` and predicting
``y1 .. yS <eos>`` (teacher forcing). ``<sos>`` and ``<eos>`` are one id,
``model.ctc_attention.decoder.sos_eos_id`` (the tokenizer's ``<sos/eos>``, 1).

Shapes: N batch, T encoder frames, S target tokens, U = S + 1 decoder steps, V vocab,
D encoder / decoder width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrq.config import AttentionDecoderConfig, LossConfig
from asrq.models.base import EncoderCtcModel

#: Added to masked attention scores. Finite (not -inf) so a row with nothing to attend (a padded
#: utterance of length 0) gives a uniform distribution instead of NaN; exp(-1e9) is exactly 0.
MASK_VALUE = -1e9


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Transformer sine/cosine positions (Vaswani et al. 2017): ``(length, dim)``.

    Computed on the fly from ``arange(length)`` so exported programs keep ``length`` dynamic."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]  # (U, 1)
    inv = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )  # (dim / 2,)
    ang = pos * inv[None, :]
    return torch.stack([ang.sin(), ang.cos()], dim=-1).reshape(length, dim)


class MultiHeadAttention(nn.Module):
    """Plain multi-head attention (matmul + softmax, no fused kernel, so exporters keep it in one
    piece). query (N, Tq, D), memory (N, Tk, D), mask bool broadcastable to (N, 1, Tq, Tk)
    (True = attend) -> (N, Tq, D)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.h = num_heads
        self.dh = d_model // num_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: Tensor) -> Tensor:  # (N, T, D) -> (N, H, T, Dh)
        n, t, _ = x.shape
        return x.view(n, t, self.h, self.dh).transpose(1, 2)

    def forward(self, query: Tensor, memory: Tensor, mask: Tensor) -> Tensor:
        n, tq, d = query.shape
        q, k, v = (
            self._heads(self.q(query)),
            self._heads(self.k(memory)),
            self._heads(self.v(memory)),
        )
        scores = torch.matmul(q, k.transpose(-1, -2)) * (self.dh**-0.5)  # (N, H, Tq, Tk)
        scores = scores.masked_fill(~mask, MASK_VALUE)
        attn = self.dropout(torch.softmax(scores, dim=-1))
        y = torch.matmul(attn, v)  # (N, H, Tq, Dh)
        return self.out(y.transpose(1, 2).reshape(n, tq, d))


class DecoderLayer(nn.Module):
    """Pre-norm transformer decoder layer::

    x = x + SelfAttn(LN(x), causal mask)
    x = x + CrossAttn(LN(x), encoder_out)
    x = x + FFN(LN(x))                      # Linear -> ReLU -> Linear (WeNet)
    """

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.src_norm = nn.LayerNorm(d_model)
        self.src_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, d_model)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, self_mask: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """x: (N, U, D); self_mask (N, 1, U, U); memory (N, T, D); memory_mask (N, 1, 1, T)."""
        h = self.self_norm(x)
        x = x + self.dropout(self.self_attn(h, h, self_mask))
        x = x + self.dropout(self.src_attn(self.src_norm(x), memory, memory_mask))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class AttentionDecoder(nn.Module):
    """Transformer decoder over the encoder output (WeNet ``TransformerDecoder``, pre-norm).

    Token embedding scaled by ``sqrt(D)`` + sinusoidal positions, ``num_layers`` decoder layers,
    a final LayerNorm and the output projection ``D -> V``.
    """

    def __init__(self, vocab_size: int, d_model: int, cfg: AttentionDecoderConfig) -> None:
        super().__init__()
        if d_model % cfg.num_heads:
            raise ValueError(
                f"model.ctc_attention.decoder.num_heads={cfg.num_heads} must divide the encoder "
                f"width {d_model}"
            )
        ffn = cfg.ffn_dim or 4 * d_model
        self.d_model = d_model
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, cfg.num_heads, ffn, cfg.dropout) for _ in range(cfg.num_layers)
        )
        self.out_norm = nn.LayerNorm(d_model)
        self.output = nn.Linear(d_model, vocab_size)

    def forward(
        self, memory: Tensor, memory_lens: Tensor, ys_in: Tensor, ys_lens: Tensor
    ) -> Tensor:
        """memory: (N, T, D) encoder output, memory_lens (N,); ys_in: (N, U) int64 input tokens
        (``<sos>`` first; positions ``>= ys_lens`` are padding, any id), ys_lens (N,).

        Returns logits (N, U, V): row ``u`` predicts the token after ``ys_in[:, u]``. Rows past
        ``ys_lens`` are garbage (never NaN)."""
        n, u = ys_in.shape
        t = memory.shape[1]
        dev = ys_in.device
        y_idx = torch.arange(u, device=dev)
        key_ok = y_idx[None, :] < ys_lens[:, None]  # (N, U)
        causal = y_idx[None, :] <= y_idx[:, None]  # (U, U): query i sees keys j <= i
        # a query always sees itself, so padded rows are never fully masked
        self_mask = (
            (causal[None] & key_ok[:, None, :]) | torch.eye(u, dtype=torch.bool, device=dev)[None]
        ).unsqueeze(1)
        mem_mask = (torch.arange(t, device=dev)[None, :] < memory_lens[:, None])[
            :, None, None, :
        ]  # (N, 1, 1, T)
        emb = self.embed(ys_in.clamp(min=0, max=self.vocab_size - 1))  # (N, U, D)
        x = self.dropout(emb * math.sqrt(self.d_model) + sinusoidal_positions(u, self.d_model, dev))
        for layer in self.layers:
            x = layer(x, self_mask, memory, mem_mask)
        return self.output(self.out_norm(x))


def add_sos_eos(
    targets: Tensor, target_lens: Tensor, sos_eos: int
) -> tuple[Tensor, Tensor, Tensor]:
    """targets (N, S) padded (any pad), lens (N,) -> decoder input ``<sos> y`` (N, S + 1),
    decoder output ``y <eos>`` (N, S + 1) with -1 past the end, and lengths ``S_i + 1`` (N,)."""
    n, s = targets.shape
    dev = targets.device
    idx = torch.arange(s + 1, device=dev)[None, :]  # (1, S + 1)
    y = torch.cat([targets.clamp(min=0), torch.zeros(n, 1, dtype=targets.dtype, device=dev)], dim=1)
    ys_in = torch.cat(
        [torch.full((n, 1), sos_eos, dtype=targets.dtype, device=dev), targets.clamp(min=0)], dim=1
    )
    ys_out = torch.where(idx < target_lens[:, None], y, torch.full_like(y, -1))
    ys_out = torch.where(idx == target_lens[:, None], torch.full_like(y, sos_eos), ys_out)
    return ys_in, ys_out, target_lens + 1


class CtcAttentionModel(EncoderCtcModel):
    """Encoder + CTC head + attention decoder (see the module doc).

    Args:
        encoder: maps ``(x (N, T, F), x_lens, chunk_size, left_chunks)`` to ``((N, T', D), (N,))``;
            has ``output_dim``, ``init_states`` and ``streaming_forward``.
        decoder: the :class:`AttentionDecoder`.
        vocab_size, blank_id: token inventory (blank is CTC's).
        sos_eos_id: the decoder's start and end symbol.
    """

    head = "ctc_attention"

    def __init__(
        self,
        encoder: nn.Module,
        decoder: AttentionDecoder,
        vocab_size: int,
        blank_id: int = 0,
        sos_eos_id: int = 1,
    ) -> None:
        if not 0 <= sos_eos_id < vocab_size or sos_eos_id == blank_id:
            raise ValueError(
                f"model.ctc_attention.decoder.sos_eos_id={sos_eos_id} must be a non-blank id below "
                f"vocab_size={vocab_size}"
            )
        super().__init__(encoder, vocab_size, blank_id)
        self.decoder = decoder
        self.sos_id = self.eos_id = sos_eos_id
        self.add_ctc(True)

    def forward_heads(
        self,
        enc: Tensor,
        enc_lens: Tensor,
        targets: Tensor,
        target_lens: Tensor,
        loss_cfg: LossConfig,
    ) -> dict[str, Tensor]:
        """``ctc`` (zero when ``loss_cfg.ctc_weight`` is 0) and ``att`` (label-smoothed decoder
        cross-entropy), each summed over the batch."""
        if loss_cfg.ctc_weight > 0:
            ctc = self.forward_ctc(enc, enc_lens, targets, target_lens)
        else:
            ctc = torch.zeros((), device=enc.device)
        att = self.forward_attention(enc, enc_lens, targets, target_lens, loss_cfg.label_smoothing)
        return {"ctc": ctc, "att": att}

    # ---- heads ------------------------------------------------------------------------------
    def forward_attention(
        self,
        enc: Tensor,
        enc_lens: Tensor,
        targets: Tensor,
        target_lens: Tensor,
        label_smoothing: float = 0.0,
    ) -> Tensor:
        """Summed label-smoothed cross-entropy of the teacher-forced decoder.

        Smoothing is torch's ``cross_entropy(label_smoothing=s)``: mass ``s / V`` on every
        class (WeNet spreads ``s / (V - 1)`` over the non-targets; the gradients differ by a
        hair)."""
        ys_in, ys_out, ys_lens = add_sos_eos(targets, target_lens, self.sos_id)
        logits = self.decoder(enc, enc_lens, ys_in, ys_lens)  # (N, S + 1, V)
        return F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            ys_out.reshape(-1),
            ignore_index=-1,
            label_smoothing=label_smoothing,
            reduction="sum",
        )

    def decoder_log_probs(
        self, enc: Tensor, enc_lens: Tensor, hyps_in: Tensor, hyps_lens: Tensor
    ) -> Tensor:
        """Decoder log-probabilities for rescoring: enc (N, T, D), enc_lens (N,), hyps_in (N, U)
        (``<sos>`` + tokens), hyps_lens (N,) -> (N, U, V)."""
        return self.decoder(enc, enc_lens, hyps_in, hyps_lens).log_softmax(dim=-1)
