"""Streaming Conformer encoder (Gulati et al. 2020) with chunked attention (WeNet U2).

Block (macaron, pre-norm)::

    x = x + 1/2 FFN(x)
    x = x + MHSA(LN(x), chunk mask)        # rotary positions, so only relative offsets matter
    x = x + Conv(LN(x))                    # causal depthwise conv: no future frames
    x = x + 1/2 FFN(x)
    x = LN(x)

Streaming: with a chunk of ``C`` frames and ``L`` left frames, frame ``i`` attends the frames of
its own chunk and of the ``L / C`` previous chunks. :meth:`ConformerEncoder.streaming_forward`
reproduces the masked full-sequence forward chunk by chunk with explicit state:

- ``attn_cache`` ``(num_layers, N, L, 2 * D)``: keys and values (before rotary) of the last L frames,
- ``conv_cache`` ``(num_layers, N, D, kernel - 1)``: depthwise-conv inputs of the last frames,
- ``processed`` ``(N,)`` int64: encoder frames seen so far (masks the empty cache at the start).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrq.config import EncoderConfig
from asrq.models.subsampling import Conv2dSubsampling


# --------------------------------------------------------------------------------------------
# masks and positions
# --------------------------------------------------------------------------------------------
def chunk_attention_mask(t: int, chunk: int, left_chunks: int, device: torch.device | None = None) -> Tensor:
    """Boolean ``(T, T)`` mask, True where query ``i`` may attend key ``j``.

    ``chunk <= 0`` means full context; ``left_chunks < 0`` means unlimited left context.
    """
    idx = torch.arange(t, device=device)
    if chunk <= 0:
        return torch.ones(t, t, dtype=torch.bool, device=device)
    ci = idx // chunk
    cq, ck = ci[:, None], ci[None, :]
    allowed = ck <= cq
    if left_chunks >= 0:
        allowed = allowed & (ck >= cq - left_chunks)
    return allowed


def rotary_cos_sin(positions: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """positions: (T,) float -> cos, sin: (T, head_dim)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    ang = positions.float()[:, None] * inv_freq[None, :]  # (T, head_dim / 2)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (N, H, T, Dh); cos/sin: (T, Dh)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


# --------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------
class FeedForward(nn.Module):
    """LN -> Linear(D, F) -> SiLU -> Dropout -> Linear(F, D) -> Dropout; (N, T, D) -> (N, T, D)."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.w1 = nn.Linear(d_model, ffn_dim)
        self.w2 = nn.Linear(ffn_dim, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.w2(self.dropout(F.silu(self.w1(self.norm(x))))))


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi (Press et al. 2022) head slopes ``2^(-8 (h + 1) / H)``: ``(H,)``."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)])


class RotarySelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions and an ALiBi distance bias; the input is
    already normalized.

    The ALiBi bias ``-slope_h * |i - j|`` makes heads start local (a few frames) to global, which
    keeps a freshly initialised encoder from averaging every frame into the same vector (we saw
    the CTC loss sit on its blank plateau for 1000+ steps without it on the mini corpus).
    Both position schemes depend only on ``i - j``, so chunked streaming with a cache is exact.

    ``forward`` takes a boolean mask broadcastable to ``(N, H, T_q, T_k)`` (True = attend).
    Attention is written as matmul + softmax (no fused SDPA) so exporters keep it in one piece.
    """

    def __init__(
        self, d_model: int, num_heads: int, dropout: float, rotary_base: float, alibi: bool = True
    ) -> None:
        super().__init__()
        self.h = num_heads
        self.dh = d_model // num_heads
        self.rotary_base = rotary_base
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("slopes", alibi_slopes(num_heads) if alibi else torch.zeros(num_heads), persistent=False)

    def _heads(self, x: Tensor) -> Tensor:  # (N, T, D) -> (N, H, T, Dh)
        n, t, _ = x.shape
        return x.view(n, t, self.h, self.dh).transpose(1, 2)

    def attend(self, q_in: Tensor, kv: Tensor, q_offset: int, mask: Tensor) -> Tensor:
        """q_in: (N, Tq, D); kv: (N, Tk, 2D) unrotated keys|values; queries sit at key
        positions ``q_offset .. q_offset + Tq - 1``; mask (N, 1, Tq, Tk). Returns (N, Tq, D)."""
        n, tq, d = q_in.shape
        tk = kv.shape[1]
        k, v = kv.split(d, dim=-1)
        q, k, v = self._heads(self.q(q_in)), self._heads(k), self._heads(v)
        pos = torch.arange(tk, device=q_in.device)
        cos, sin = rotary_cos_sin(pos, self.dh, self.rotary_base)
        k = apply_rotary(k, cos, sin)
        q = apply_rotary(q, cos[q_offset : q_offset + tq], sin[q_offset : q_offset + tq])
        dist = (pos[q_offset : q_offset + tq, None] - pos[None, :]).abs().float()  # (Tq, Tk)
        bias = -self.slopes[:, None, None] * dist  # (H, Tq, Tk)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (self.dh**-0.5) + bias
        scores = scores.masked_fill(~mask, float("-inf"))
        attn = self.dropout(torch.softmax(scores, dim=-1))
        y = torch.matmul(attn, v)  # (N, H, Tq, Dh)
        return self.out(y.transpose(1, 2).reshape(n, tq, d))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.attend(x, self.kv(x), 0, mask)


class CausalConvModule(nn.Module):
    """Pointwise (D -> 2D) + GLU -> causal depthwise conv (kernel K) -> LN -> SiLU -> pointwise.

    LayerNorm replaces the usual BatchNorm so train/eval and chunked inference agree.
    """

    def __init__(self, d_model: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.kernel = kernel
        self.norm = nn.LayerNorm(d_model)
        self.pw1 = nn.Linear(d_model, 2 * d_model)
        self.dw = nn.Conv1d(d_model, d_model, kernel, groups=d_model)
        self.dw_norm = nn.LayerNorm(d_model)
        self.pw2 = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, cache: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: (N, T, D); cache: (N, D, K-1) or None (zeros). Returns (N, T, D) and the new cache."""
        y = F.glu(self.pw1(self.norm(x)), dim=-1).transpose(1, 2)  # (N, D, T)
        if cache is None:
            y = F.pad(y, (self.kernel - 1, 0))
        else:
            y = torch.cat([cache, y], dim=2)
        new_cache = y[:, :, y.shape[2] - (self.kernel - 1) :]
        y = self.dw(y).transpose(1, 2)  # (N, T, D)
        y = self.pw2(F.silu(self.dw_norm(y)))
        return self.dropout(y), new_cache


class ConformerLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ff1 = FeedForward(d, cfg.ffn_dim, cfg.dropout)
        self.attn_norm = nn.LayerNorm(d)
        self.attn = RotarySelfAttention(d, cfg.num_heads, cfg.dropout, cfg.rotary_base, cfg.alibi)
        self.conv = CausalConvModule(d, cfg.conv_kernel, cfg.dropout)
        self.ff2 = FeedForward(d, cfg.ffn_dim, cfg.dropout)
        # Gulati's per-block LayerNorm; off by default: a pure pre-norm stack (one LayerNorm at the
        # encoder output) leaves the CTC blank plateau far sooner on short trainings
        self.final_norm = nn.LayerNorm(d) if cfg.block_final_norm else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (N, T, D); mask: (N, 1, T, T) bool."""
        x = x + 0.5 * self.ff1(x)
        x = x + self.dropout(self.attn(self.attn_norm(x), mask))
        x = x + self.conv(x)[0]
        x = x + 0.5 * self.ff2(x)
        return self.final_norm(x)

    def streaming_forward(
        self, x: Tensor, mask: Tensor, attn_cache: Tensor, conv_cache: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x: (N, C, D); mask: (N, 1, C, L + C); attn_cache: (N, L, 2D); conv_cache: (N, D, K-1)."""
        left = attn_cache.shape[1]
        x = x + 0.5 * self.ff1(x)
        h = self.attn_norm(x)
        kv = torch.cat([attn_cache, self.attn.kv(h)], dim=1)  # (N, L + C, 2D)
        x = x + self.attn.attend(h, kv, left, mask)
        c, new_conv = self.conv(x, conv_cache)
        x = x + c
        x = x + 0.5 * self.ff2(x)
        return self.final_norm(x), kv[:, kv.shape[1] - left :], new_conv


class ConformerEncoder(nn.Module):
    """fbank ``(N, T, F)`` -> encoder frames ``(N, T', D)``, ``T' ~ T / 4``."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Conv2dSubsampling(cfg.feature_dim, cfg.d_model, dropout=cfg.dropout)
        self.layers = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.num_layers))
        self.out_norm = nn.Identity() if cfg.block_final_norm else nn.LayerNorm(cfg.d_model)

    @property
    def output_dim(self) -> int:
        return self.cfg.d_model

    def forward(
        self, x: Tensor, x_lens: Tensor, chunk_size: int = -1, left_chunks: int = -1
    ) -> tuple[Tensor, Tensor]:
        """x: (N, T, F), x_lens: (N,). ``chunk_size`` in encoder frames (<= 0: full context).

        Returns (N, T', D) and lengths (N,)."""
        x, lens = self.embed(x, x_lens)
        t = x.shape[1]
        valid = torch.arange(t, device=x.device)[None, :] < lens[:, None]  # (N, T')
        mask = chunk_attention_mask(t, chunk_size, left_chunks, x.device)[None] & valid[:, None, :]
        # a query always sees itself, so padded rows never become all-masked (NaN)
        mask = (mask | torch.eye(t, dtype=torch.bool, device=x.device)[None]).unsqueeze(1)
        for layer in self.layers:
            x = layer(x, mask)
        return self.out_norm(x), lens

    # ---- streaming --------------------------------------------------------------------------
    def init_states(self, batch_size: int, left_frames: int, device: torch.device | None = None) -> list[Tensor]:
        """Zero states: [attn_cache (L, N, left, 2D), conv_cache (L, N, D, K-1), processed (N,)]."""
        c = self.cfg
        return [
            torch.zeros(c.num_layers, batch_size, left_frames, 2 * c.d_model, device=device),
            torch.zeros(c.num_layers, batch_size, c.d_model, c.conv_kernel - 1, device=device),
            torch.zeros(batch_size, dtype=torch.int64, device=device),
        ]

    def streaming_forward(
        self, x: Tensor, x_lens: Tensor, states: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """One chunk. x: (N, 4C + 3, F) fbank window (3 frames overlap the next window);
        x_lens: (N,) valid fbank frames in the window. Returns (N, C, D), valid frames (N,), states.
        """
        attn_cache, conv_cache, processed = states
        x, lens = self.embed(x, x_lens)
        n, c, _ = x.shape
        left = attn_cache.shape[2]
        j = torch.arange(left + c, device=x.device)[None, :]  # key index in [cache | chunk]
        key_ok = torch.where(
            j < left, j >= left - processed[:, None], (j - left) < lens[:, None]
        )  # (N, L + C)
        self_ok = (j[:, None, :] - left) == torch.arange(c, device=x.device)[None, :, None]  # (1, C, L + C)
        mask = (key_ok[:, None, :] | self_ok).unsqueeze(1)  # (N, 1, C, L + C)
        new_attn, new_conv = [], []
        for i, layer in enumerate(self.layers):
            x, a, cc = layer.streaming_forward(x, mask, attn_cache[i], conv_cache[i])
            new_attn.append(a)
            new_conv.append(cc)
        return self.out_norm(x), lens, [torch.stack(new_attn), torch.stack(new_conv), processed + c]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
