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

- ``attn_cache`` ``(num_layers, N, fold * L, 2 * D / fold)``: keys and values (before rotary) of
  the sub-tokens of the last L frames (``(num_layers, N, L, 2 * D)`` without folding),
- ``conv_cache`` ``(num_layers, N, D, kernel - 1)``: depthwise-conv inputs of the last frames,
- ``processed`` ``(N,)`` int64: encoder frames seen so far (masks the empty cache at the start).

:meth:`ConformerEncoder.state_specs` declares them (names, shapes, dtypes, batch axes) for the
export and the runtimes (see :mod:`asrq.models.states`).

Folding attention (Li et al., "Folding Attention", arXiv 2309.07988; the paper's equations were
not available to us, so this is our reading of its description). With ``fold = f`` a token of
width D becomes ``f`` sub-tokens of width ``D / f``: ``(N, T, D) -> (N, T * f, D / f)`` by a plain
reshape (sub-token ``k`` of token ``t`` holds channels ``k D/f .. (k+1) D/f - 1``, at row
``t f + k``). The attention's q / kv / out projections and both FFN linears (``D/f -> F/f -> D/f``)
act on sub-tokens, so their weights shrink by ``f^2`` (the same weights serve every sub-token
slot); attention runs over ``T * f`` sub-tokens with ``num_heads`` heads of width
``D / (f * num_heads)``, under the token chunk mask expanded so the sub-tokens of a token share
its chunk; the result is reshaped back to ``(N, T, D)``. LayerNorms stay on width D (applied
before folding); the conv module and the subsampling are not folded. Positions: sub-token ``k``
of token ``t`` sits at the fractional position ``t + k / f`` (rotary angle and ALiBi distance), so
attention can tell the sub-token slots apart while every offset between tokens is unchanged and
chunked streaming stays exact. ``fold = 1`` is the plain Conformer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrq.config import EncoderConfig
from asrq.models.states import StateSpec, zero_states
from asrq.models.subsampling import Conv2dSubsampling


# --------------------------------------------------------------------------------------------
# masks and positions
# --------------------------------------------------------------------------------------------
def chunk_attention_mask(
    t: int, chunk: int, left_chunks: int, device: torch.device | None = None
) -> Tensor:
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


def encoder_attention_mask(t: int, lens: Tensor, chunk_size: int, left_chunks: int) -> Tensor:
    """Full-sequence encoder mask ``(N, 1, T, T)``: the chunk mask of :func:`chunk_attention_mask`
    over the valid frames ``< lens`` (N,); a query always sees itself, so padded rows never
    become all-masked (NaN)."""
    dev = lens.device
    valid = torch.arange(t, device=dev)[None, :] < lens[:, None]  # (N, T)
    mask = chunk_attention_mask(t, chunk_size, left_chunks, dev)[None] & valid[:, None, :]
    return (mask | torch.eye(t, dtype=torch.bool, device=dev)[None]).unsqueeze(1)


def streaming_attention_mask(left: int, c: int, processed: Tensor, lens: Tensor) -> Tensor:
    """Mask ``(N, 1, C, L + C)`` of one streaming chunk over the keys ``[cache | chunk]``: cache
    slots filled so far (``processed`` (N,) frames seen), valid chunk frames (``lens`` (N,)), and
    every query's own frame."""
    dev = lens.device
    j = torch.arange(left + c, device=dev)[None, :]  # key index in [cache | chunk]
    key_ok = torch.where(
        j < left, j >= left - processed[:, None], (j - left) < lens[:, None]
    )  # (N, L + C)
    self_ok = (j[:, None, :] - left) == torch.arange(c, device=dev)[None, :, None]  # (1, C, L + C)
    return (key_ok[:, None, :] | self_ok).unsqueeze(1)


def rotary_cos_sin(positions: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """positions: (T,) float -> cos, sin: (T, head_dim)."""
    inv_freq = 1.0 / (
        base
        ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    )
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
def fold_tokens(x: Tensor, fold: int) -> Tensor:
    """(N, T, D) -> (N, T * fold, D / fold): token ``t`` becomes sub-tokens
    ``t*fold .. t*fold + fold - 1``."""
    if fold == 1:
        return x
    n, t, d = x.shape
    return x.reshape(n, t * fold, d // fold)


def unfold_tokens(x: Tensor, fold: int) -> Tensor:
    """(N, T * fold, D / fold) -> (N, T, D), the inverse of :func:`fold_tokens`."""
    if fold == 1:
        return x
    n, ts, ds = x.shape
    return x.reshape(n, ts // fold, ds * fold)


def expand_token_mask(mask: Tensor, fold: int) -> Tensor:
    """Token mask (N, H, Tq, Tk) -> sub-token mask (N, H, Tq * fold, Tk * fold): the sub-tokens of a
    token share its row and column (``repeat_interleave`` on both axes, written as expand +
    reshape for the exporters)."""
    if fold == 1:
        return mask
    n, h, tq, tk = mask.shape
    m = mask[:, :, :, None, :, None].expand(n, h, tq, fold, tk, fold)
    return m.reshape(n, h, tq * fold, tk * fold)


class FeedForward(nn.Module):
    """LN -> fold -> Linear(D/f, F/f) -> SiLU -> Dropout -> Linear(F/f, D/f) -> unfold -> Dropout;
    (N, T, D) -> (N, T, D). ``fold`` f = 1: the usual FFN (see the module doc for folding)."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float, fold: int = 1) -> None:
        super().__init__()
        self.fold = fold
        self.norm = nn.LayerNorm(d_model)
        self.w1 = nn.Linear(d_model // fold, ffn_dim // fold)
        self.w2 = nn.Linear(ffn_dim // fold, d_model // fold)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = fold_tokens(self.norm(x), self.fold)  # (N, T * f, D / f)
        y = self.w2(self.dropout(F.silu(self.w1(h))))
        return self.dropout(unfold_tokens(y, self.fold))


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

    ``fold`` f > 1: folding attention (see the module doc): projections of width ``W = D / f`` act
    on ``f`` sub-tokens per token, at fractional positions ``t + k / f``; masks stay in tokens.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        dropout: float,
        rotary_base: float,
        alibi: bool = True,
        fold: int = 1,
    ) -> None:
        super().__init__()
        self.fold = fold
        width = d_model // fold  # W: sub-token width
        self.h = num_heads
        self.dh = width // num_heads
        self.rotary_base = rotary_base
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer(
            "slopes", alibi_slopes(num_heads) if alibi else torch.zeros(num_heads), persistent=False
        )

    def _heads(self, x: Tensor) -> Tensor:  # (N, T, W) -> (N, H, T, Dh)
        n, t, _ = x.shape
        return x.view(n, t, self.h, self.dh).transpose(1, 2)

    def attend(self, q_in: Tensor, kv: Tensor, q_offset: int, mask: Tensor) -> Tensor:
        """q_in: (N, Tq, W) (sub-)tokens; kv: (N, Tk, 2W) their unrotated keys|values; queries sit
        at key positions ``q_offset .. q_offset + Tq - 1`` (sub-token units); mask (N, 1, Tq / f,
        Tk / f) in tokens. Returns (N, Tq, W). Without folding W = D and sub-tokens are tokens."""
        n, tq, d = q_in.shape
        tk = kv.shape[1]
        k, v = kv.split(d, dim=-1)
        q, k, v = self._heads(self.q(q_in)), self._heads(k), self._heads(v)
        pos = torch.arange(tk, device=q_in.device)
        if self.fold > 1:
            pos = pos.float() / self.fold  # sub-token k of token t sits at t + k / f
            mask = expand_token_mask(mask, self.fold)
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
        """x: (N, T, D) normalized; mask (N, 1, T, T) -> (N, T, D)."""
        xs = fold_tokens(x, self.fold)  # (N, T * f, W)
        return unfold_tokens(self.attend(xs, self.kv(xs), 0, mask), self.fold)

    def streaming_forward(self, x: Tensor, mask: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        """One chunk. x: (N, C, D) normalized; mask (N, 1, C, L + C); cache (N, f * L, 2W):
        keys|values
        of the sub-tokens of the last L frames. Returns (N, C, D) and the new cache."""
        xs = fold_tokens(x, self.fold)
        left = cache.shape[1]
        kv = torch.cat([cache, self.kv(xs)], dim=1)  # (N, f * (L + C), 2W)
        y = unfold_tokens(self.attend(xs, kv, left, mask), self.fold)
        return y, kv[:, kv.shape[1] - left :]


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


#: names of the last projection of every residual branch (FFN, attention, conv module, SSM)
RESIDUAL_OUTPUTS = ("w2", "out", "pw2")


@torch.no_grad()
def scale_residual_outputs(
    layers: nn.Module, scale: float, names: tuple[str, ...] = RESIDUAL_OUTPUTS
) -> int:
    """Multiply the init of every residual branch's output projection (``nn.Linear`` named in
    ``names``) by ``scale``; returns how many were scaled. With ``scale < 1`` each block starts
    near the identity (as SkipInit / T-Fixup / icefall's layer bypass do), so the deep stack
    first trains like a shallow one; ScaledAdam then learns each weight's scale. A no-op at 1."""
    n = 0
    if scale == 1.0:
        return n
    for name, mod in layers.named_modules():
        if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in names:
            mod.weight.mul_(scale)
            n += 1
    return n


class ConformerLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ff1 = FeedForward(d, cfg.ffn_dim, cfg.dropout, cfg.fold)
        self.attn_norm = nn.LayerNorm(d)
        self.attn = RotarySelfAttention(
            d, cfg.num_heads, cfg.dropout, cfg.rotary_base, cfg.alibi, cfg.fold
        )
        self.conv = CausalConvModule(d, cfg.conv_kernel, cfg.dropout)
        self.ff2 = FeedForward(d, cfg.ffn_dim, cfg.dropout, cfg.fold)
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
        """x: (N, C, D); mask: (N, 1, C, L + C); attn_cache: (N, f * L, 2D / f); conv_cache: (N, D,
        K-1)."""
        x = x + 0.5 * self.ff1(x)
        a, new_attn = self.attn.streaming_forward(self.attn_norm(x), mask, attn_cache)
        x = x + a
        c, new_conv = self.conv(x, conv_cache)
        x = x + c
        x = x + 0.5 * self.ff2(x)
        return self.final_norm(x), new_attn, new_conv


class EncoderStack(nn.Module):
    """The shell every encoder shares: fbank ``(N, T, F)`` -> :class:`Conv2dSubsampling` ->
    ``num_layers`` blocks of ``layer_cls`` -> output LayerNorm -> ``(N, T', D)``, ``T' ~ T / 4``;
    zero streaming states from :meth:`state_specs` (a subclass declares them and runs one
    streaming chunk). ``uses_attention``: the blocks take an attention mask (else None)."""

    uses_attention: bool = True

    def __init__(self, cfg: EncoderConfig, layer_cls: Callable[[EncoderConfig], nn.Module]) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Conv2dSubsampling(cfg.feature_dim, cfg.d_model, dropout=cfg.dropout)
        self.layers = nn.ModuleList(layer_cls(cfg) for _ in range(cfg.num_layers))
        self.out_norm = nn.Identity() if cfg.block_final_norm else nn.LayerNorm(cfg.d_model)
        scale_residual_outputs(self.layers, cfg.residual_init_scale)

    @property
    def output_dim(self) -> int:
        return self.cfg.d_model

    def forward(
        self, x: Tensor, x_lens: Tensor, chunk_size: int = -1, left_chunks: int = -1
    ) -> tuple[Tensor, Tensor]:
        """x: (N, T, F), x_lens: (N,). ``chunk_size`` in encoder frames (<= 0: full context) and
        ``left_chunks`` shape the attention mask (blocks with attention only; the rest of a
        block is causal). Returns (N, T', D) and lengths (N,)."""
        x, lens = self.embed(x, x_lens)
        mask = (
            encoder_attention_mask(x.shape[1], lens, chunk_size, left_chunks)
            if self.uses_attention
            else None
        )
        for layer in self.layers:
            x = layer(x, mask)
        return self.out_norm(x), lens

    def state_specs(self, batch_size: int, left_frames: int) -> list[StateSpec]:
        raise NotImplementedError

    def init_states(
        self, batch_size: int, left_frames: int, device: torch.device | None = None
    ) -> list[Tensor]:
        """Zero states, as :meth:`state_specs` declares them."""
        return zero_states(self.state_specs(batch_size, left_frames), device)

    def attn_cache_spec(self, batch_size: int, left_frames: int) -> StateSpec:
        """attn_cache (L, N, f * left, 2D / f): per layer the keys and values of the left
        context (folded into ``f`` sub-tokens of width ``D / f``)."""
        c, f = self.cfg, self.cfg.fold
        shape = (c.num_layers, batch_size, f * left_frames, 2 * c.d_model // f)
        return StateSpec("attn_cache", shape, torch.float32, 1)

    def conv_cache_spec(self, batch_size: int) -> StateSpec:
        """conv_cache (L, N, D, K-1): per layer the last inputs of the causal conv."""
        c = self.cfg
        shape = (c.num_layers, batch_size, c.d_model, c.conv_kernel - 1)
        return StateSpec("conv_cache", shape, torch.float32, 1)

    def chunk_mask(self, attn_cache: Tensor, chunk: int, processed: Tensor, lens: Tensor) -> Tensor:
        """The attention mask of one streaming chunk of ``chunk`` frames after ``processed``
        frames, over the cached left context (N, 1, C, L + C)."""
        return streaming_attention_mask(
            attn_cache.shape[2] // self.cfg.fold, chunk, processed, lens
        )


class ConformerEncoder(EncoderStack):
    """fbank ``(N, T, F)`` -> encoder frames ``(N, T', D)``, ``T' ~ T / 4``."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg, ConformerLayer)

    # ---- streaming --------------------------------------------------------------------------
    def state_specs(self, batch_size: int, left_frames: int) -> list[StateSpec]:
        """[attn_cache (L, N, f * left, 2D / f), conv_cache (L, N, D, K-1), processed (N,)
        int64]."""
        return [
            self.attn_cache_spec(batch_size, left_frames),
            self.conv_cache_spec(batch_size),
            StateSpec("processed", (batch_size,), torch.int64, 0),
        ]

    def streaming_forward(
        self, x: Tensor, x_lens: Tensor, states: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """One chunk. x: (N, 4C + 3, F) fbank window (3 frames overlap the next window);
        x_lens: (N,) valid fbank frames in the window. Returns (N, C, D), valid frames (N,), states.
        """
        x, lens = self.embed(x, x_lens)
        x, new_states = self.streaming_layers(x, lens, states)
        return self.out_norm(x), lens, new_states

    def streaming_layers(
        self, x: Tensor, lens: Tensor, states: list[Tensor]
    ) -> tuple[Tensor, list[Tensor]]:
        """The layers of one chunk after the subsampling (no output norm): x (N, C, D)
        subsampled, lens (N,) its valid frames -> (N, C, D), new states. The latency tables time
        this apart (:mod:`asrq.export.latency`)."""
        attn_cache, conv_cache, processed = states
        c = x.shape[1]
        mask = self.chunk_mask(attn_cache, c, processed, lens)
        new_attn, new_conv = [], []
        for i, layer in enumerate(self.layers):
            x, a, cc = layer.streaming_forward(x, mask, attn_cache[i], conv_cache[i])
            new_attn.append(a)
            new_conv.append(cc)
        return x, [torch.stack(new_attn), torch.stack(new_conv), processed + c]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
