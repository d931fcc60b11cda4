"""Stateformer encoder: Conformer-style blocks around a multi-head state space layer (MH-SSM;
Fathullah et al., "Multi-Head State Space Model for Speech Recognition", arXiv 2305.12498).

The paper's equations were not available to us. What we implement, and why:

**MH-SSM** ``(N, T, D) -> (N, T, D)``. The (normalized) input is projected to ``u`` and a gate
``g`` (``in_proj``: D -> 2D); ``u`` is split into ``H`` heads of width ``P = D / H``. Each head is
a diagonal, complex, multi-input multi-output SSM with ``S`` states (S5-style MIMO, S4D-style
parameters), per head ``h``::

    x[t] = Abar x[t-1] + Bbar u[t]        x: (S,) complex, u[t]: (P,) the head's channels
    y[t] = Re(C x[t]) + Dskip * u[t]      C: (P, S) complex, Dskip: (P,) real

with ``A = diag(-exp(a_log) + i * pi * S * a_freq)`` (S4D-Lin init: real part -1/2, imaginary
``pi * n``), a learned step ``dt = exp(log_dt)`` per head, and zero-order-hold discretization
``Abar = exp(dt A)``, ``Bbar = (Abar - 1) / A * B``. The heads' steps start log-spaced from
``dt_max`` (head 0: fast decay, local dynamics) to ``dt_min`` (last head: slow, global), so
the heads begin at different time scales and learn their own. Gating between heads: the heads'
outputs are concatenated, multiplied by ``SiLU(g)`` (a gate computed from the input for every
channel of every head), and the output linear ``out`` (D -> D) mixes the heads.

Per head the state is ``S`` complex numbers, so a layer's streaming state is
``(N, H, S, 2)`` (real, imaginary), whatever the sequence length.

**Two forms, one result.** The recurrence above unrolls into the causal convolution
``y[t] = sum_k K[k] u[t - k] + Dskip u[t]`` with ``K[k] = Re(C Abar^k Bbar)``
(:meth:`MultiHeadSSM.kernel`).
We evaluate that convolution on the states (``x = sum_k Abar^k Bbar u[t - k]``, one scalar
kernel ``Abar_s^k`` per state) blockwise (:func:`ssm_scan`): inside blocks of ``Q`` frames a
``(Q, Q)`` lower-triangular Toeplitz matmul, across blocks a ``(T/Q, T/Q)`` one on the block-end
states (``Abar^(a+b) = Abar^a Abar^b`` makes the long kernel low rank across blocks). It is the
convolution form (training and the full-context encoder) and, started from a carried state, the
chunk form of the recurrence (streaming). We chose it over an FFT convolution because it needs
no complex dtype and no FFT, so ``torch.export`` -> ONNX / ExecuTorch (XNNPACK) take it with a
dynamic time axis, and because it costs ``O(T Q)`` per state with tiny matrices (the FFT's
``O(T log T)`` buys nothing at our lengths). Every power is ``|Abar|^m`` with ``m >= 0``, so it
is stable at any length. :func:`ssm_recurrence` is the frame-by-frame recurrence, the
reference the tests hold both against. The layer is causal, so padded frames (at the end) never
reach valid ones and the full forward equals the streaming one chunk by chunk.

**Stateformer block** (macaron, pure pre-norm like :class:`~asrq.models.conformer.ConformerLayer`)::

    x = x + 1/2 FFN(x)
    x = x + MH-SSM(LN(x))
    x = x + MHSA(LN(x), chunk mask)   # only with ``ssm_attention``
    x = x + Conv(x)                   # causal depthwise conv module (pre-norm inside)
    x = x + 1/2 FFN(x)

and one LayerNorm at the encoder output. FFN and attention fold with ``fold`` (folding attention,
see :mod:`asrq.models.conformer`); the MH-SSM is not folded.

Streaming states (:meth:`StateformerEncoder.state_specs`): ``attn_cache``
``(num_layers, N, fold * L, 2D / fold)`` (only with ``ssm_attention``), ``ssm_state``
``(num_layers, N, H, S, 2)``, ``conv_cache`` ``(num_layers, N, D, K - 1)``, ``processed`` ``(N,)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrq.config import EncoderConfig
from asrq.models.conformer import (
    CausalConvModule,
    EncoderStack,
    FeedForward,
    RotarySelfAttention,
)
from asrq.models.states import StateSpec

Complex = tuple[Tensor, Tensor]  # (real, imaginary) of the same shape


# --------------------------------------------------------------------------------------------
# the diagonal SSM, in real arithmetic
# --------------------------------------------------------------------------------------------
def abar_pow(la: Complex, m: Tensor) -> Complex:
    """``Abar^m = exp(m * log Abar)`` for exponents ``m >= 0`` of any shape: la (H, S) -> (H, S,
    *m.shape)."""
    shape = tuple(la[0].shape) + (1,) * m.dim()
    m = m.to(la[0].dtype)
    r = torch.exp(la[0].reshape(shape) * m)
    th = la[1].reshape(shape) * m
    return r * th.cos(), r * th.sin()


def ssm_scan(
    v: Complex, la: Complex, x0: Complex | None = None, block: int = 16
) -> tuple[Complex, Complex]:
    """The causal convolution ``x[t] = Abar^(t+1) x0 + sum_{k<=t} Abar^k v[t-k]``, blockwise.

    v: (N, H, S, T) the inputs ``Bbar u``; la: (H, S) ``log Abar = dt A``; x0: (N, H, S) the state
    before frame 0 (None: zeros). Returns x (N, H, S, T) and the last state ``x[T-1]`` (N, H, S).
    """
    n, h, s, t = v[0].shape
    q = block
    nb = (t + q - 1) // q
    vr, vi = (F.pad(c, (0, nb * q - t)).reshape(n, h, s, nb, q) for c in v)  # (N, H, S, B, Q)
    idx = torch.arange(q, device=vr.device)
    # inside a block: lower-triangular Toeplitz L[q, p] = Abar^(q - p), p <= q
    diff = idx[:, None] - idx[None, :]
    lr, li = abar_pow(la, diff.clamp(min=0))
    tri = (diff >= 0).to(lr.dtype)
    lr, li = (lr * tri).transpose(-1, -2), (li * tri).transpose(-1, -2)  # (H, S, Q, Q), transposed
    xr = vr @ lr - vi @ li
    xi = vr @ li + vi @ lr
    # across blocks: state entering block j, X[j] = Abar^(Q j) x0 + sum_{i<j} Abar^(Q (j-1-i)) e[i]
    er, ei = xr[..., q - 1 :], xi[..., q - 1 :]  # block-end states (N, H, S, B, 1)
    jj = torch.arange(nb, device=vr.device)
    dj = jj[:, None] - 1 - jj[None, :]
    gr, gi = abar_pow(la, q * dj.clamp(min=0))
    low = (dj >= 0).to(gr.dtype)
    gr, gi = gr * low, gi * low  # (H, S, B, B)
    big_r = gr @ er - gi @ ei  # (N, H, S, B, 1)
    big_i = gr @ ei + gi @ er
    if x0 is not None:
        pr, pi = abar_pow(la, q * jj)  # (H, S, B)
        big_r = big_r + (pr * x0[0][..., None] - pi * x0[1][..., None])[..., None]
        big_i = big_i + (pr * x0[1][..., None] + pi * x0[0][..., None])[..., None]
    # x[j, q] = local[j, q] + Abar^(q+1) X[j]
    wr, wi = abar_pow(la, idx + 1)  # (H, S, Q)
    wr, wi = wr[:, :, None, :], wi[:, :, None, :]
    xr = (xr + wr * big_r - wi * big_i).reshape(n, h, s, nb * q)[..., :t]
    xi = (xi + wr * big_i + wi * big_r).reshape(n, h, s, nb * q)[..., :t]
    return (xr, xi), (xr[..., t - 1], xi[..., t - 1])


def ssm_recurrence(v: Complex, la: Complex, x0: Complex | None = None) -> tuple[Complex, Complex]:
    """The same as :func:`ssm_scan`, frame by frame: ``x[t] = Abar x[t-1] + v[t]`` (the
    reference)."""
    n, h, s, t = v[0].shape
    ar, ai = abar_pow(la, torch.ones((), device=v[0].device))
    xr, xi = x0 if x0 is not None else (v[0].new_zeros(n, h, s), v[0].new_zeros(n, h, s))
    outs_r, outs_i = [], []
    for k in range(t):
        xr, xi = ar * xr - ai * xi + v[0][..., k], ar * xi + ai * xr + v[1][..., k]
        outs_r.append(xr)
        outs_i.append(xi)
    return (torch.stack(outs_r, -1), torch.stack(outs_i, -1)), (xr, xi)


class MultiHeadSSM(nn.Module):
    """Multi-head diagonal SSM with gating between heads (see the module doc).

    Args:
        d_model: D. num_heads: H (D divides by it). state_dim: S complex states per head.
        dt_min, dt_max: range of the heads' initial steps (log-spaced over the heads).
        block: Q, frames per block of :func:`ssm_scan`.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        state_dim: int,
        dt_min: float = 0.01,
        dt_max: float = 0.5,
        block: int = 16,
    ) -> None:
        super().__init__()
        h, s, p = num_heads, state_dim, d_model // num_heads
        self.h, self.s, self.p, self.block = h, s, p, block
        self.in_proj = nn.Linear(d_model, 2 * d_model)  # u | gate
        # A = -exp(a_log) + i * pi * S * a_freq; a_freq in [0, 1) keeps the parameter O(1) for
        # ScaledAdam
        self.a_log = nn.Parameter(torch.full((h, s), math.log(0.5)))
        self.a_freq = nn.Parameter((torch.arange(s, dtype=torch.float32) / s).repeat(h, 1))
        self.log_dt = nn.Parameter(torch.linspace(math.log(dt_max), math.log(dt_min), h))
        self.b_re = nn.Parameter(torch.randn(h, s, p) * (0.5 / p) ** 0.5)
        self.b_im = nn.Parameter(torch.randn(h, s, p) * (0.5 / p) ** 0.5)
        self.c_re = nn.Parameter(torch.randn(h, p, s) * (0.5 / s) ** 0.5)
        self.c_im = nn.Parameter(torch.randn(h, p, s) * (0.5 / s) ** 0.5)
        self.d_skip = nn.Parameter(torch.ones(h, p))
        self.out = nn.Linear(d_model, d_model)

    def discretize(self) -> tuple[Complex, Complex]:
        """``log Abar = dt A`` (H, S) and the zero-order-hold ``Bbar`` (H, S, P)."""
        dt = self.log_dt.exp()[:, None]  # (H, 1)
        a_re, a_im = -self.a_log.exp(), math.pi * self.s * self.a_freq
        la = (dt * a_re, dt * a_im)
        mag = la[0].exp()
        nr, ni = mag * la[1].cos() - 1.0, mag * la[1].sin()  # Abar - 1
        den = a_re * a_re + a_im * a_im  # > 0: a_re < 0
        fr, fi = (nr * a_re + ni * a_im) / den, (ni * a_re - nr * a_im) / den  # (Abar - 1) / A
        fr, fi = fr[..., None], fi[..., None]
        return la, (fr * self.b_re - fi * self.b_im, fr * self.b_im + fi * self.b_re)

    def kernel(self, length: int) -> Tensor:
        """The convolution kernel ``K[k] = Re(C Abar^k Bbar)``, k < length: (H, length, P, P)."""
        la, (br, bi) = self.discretize()
        pr, pi = abar_pow(la, torch.arange(length, device=br.device))  # (H, S, K)
        kr = torch.einsum("hps,hsk,hsq->hkpq", self.c_re, pr, br) - torch.einsum(
            "hps,hsk,hsq->hkpq", self.c_re, pi, bi
        )
        ki = torch.einsum("hps,hsk,hsq->hkpq", self.c_im, pr, bi) + torch.einsum(
            "hps,hsk,hsq->hkpq", self.c_im, pi, br
        )
        return kr - ki

    def forward(
        self, x: Tensor, state: Tensor | None = None, recurrent: bool = False
    ) -> tuple[Tensor, Tensor]:
        """x: (N, T, D) normalized; state: (N, H, S, 2) before frame 0 (None: zeros).

        Returns (N, T, D) and the state after the last frame (N, H, S, 2). ``recurrent``: run the
        frame-by-frame recurrence instead of the blockwise convolution (same result)."""
        n, t, d = x.shape
        u, g = self.in_proj(x).chunk(2, dim=-1)
        uh = u.reshape(n, t, self.h, self.p)  # (N, T, H, P)
        la, (br, bi) = self.discretize()
        v = (
            torch.einsum("nthp,hsp->nhst", uh, br),
            torch.einsum("nthp,hsp->nhst", uh, bi),
        )  # (N, H, S, T)
        x0 = None if state is None else (state[..., 0], state[..., 1])
        if recurrent:
            (xr, xi), last = ssm_recurrence(v, la, x0)
        else:
            (xr, xi), last = ssm_scan(v, la, x0, self.block)
        y = torch.einsum("hps,nhst->nthp", self.c_re, xr) - torch.einsum(
            "hps,nhst->nthp", self.c_im, xi
        )
        y = (y + self.d_skip * uh).reshape(n, t, d)
        return self.out(y * F.silu(g)), torch.stack(last, dim=-1)


# --------------------------------------------------------------------------------------------
# block and encoder
# --------------------------------------------------------------------------------------------
class StateformerLayer(nn.Module):
    """1/2 FFN -> MH-SSM -> (chunked MHSA) -> causal conv -> 1/2 FFN, pre-norm residuals."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ff1 = FeedForward(d, cfg.ffn_dim, cfg.dropout, cfg.fold)
        self.ssm_norm = nn.LayerNorm(d)
        self.ssm = MultiHeadSSM(d, cfg.ssm_heads, cfg.ssm_state_dim)
        self.attn_norm: nn.Module | None = nn.LayerNorm(d) if cfg.ssm_attention else None
        self.attn: RotarySelfAttention | None = (
            RotarySelfAttention(d, cfg.num_heads, cfg.dropout, cfg.rotary_base, cfg.alibi, cfg.fold)
            if cfg.ssm_attention
            else None
        )
        self.conv = CausalConvModule(d, cfg.conv_kernel, cfg.dropout)
        self.ff2 = FeedForward(d, cfg.ffn_dim, cfg.dropout, cfg.fold)
        self.final_norm = nn.LayerNorm(d) if cfg.block_final_norm else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x: (N, T, D); mask: (N, 1, T, T) bool (used only with attention)."""
        x = x + 0.5 * self.ff1(x)
        x = x + self.dropout(self.ssm(self.ssm_norm(x))[0])
        if self.attn is not None:
            x = x + self.dropout(self.attn(self.attn_norm(x), mask))
        x = x + self.conv(x)[0]
        x = x + 0.5 * self.ff2(x)
        return self.final_norm(x)

    def streaming_forward(
        self,
        x: Tensor,
        mask: Tensor | None,
        ssm_state: Tensor,
        conv_cache: Tensor,
        attn_cache: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """x: (N, C, D); ssm_state (N, H, S, 2); conv_cache (N, D, K-1); attn_cache (N, f * L, 2D /
        f)
        or None. Returns (N, C, D) and the new ssm_state, conv_cache, attn_cache."""
        x = x + 0.5 * self.ff1(x)
        y, new_ssm = self.ssm(self.ssm_norm(x), ssm_state)
        x = x + y
        new_attn = None
        if self.attn is not None:
            a, new_attn = self.attn.streaming_forward(self.attn_norm(x), mask, attn_cache)
            x = x + a
        c, new_conv = self.conv(x, conv_cache)
        x = x + c
        x = x + 0.5 * self.ff2(x)
        return self.final_norm(x), new_ssm, new_conv, new_attn


class StateformerEncoder(EncoderStack):
    """fbank ``(N, T, F)`` -> encoder frames ``(N, T', D)``, ``T' ~ T / 4``; the interface of
    :class:`~asrq.models.conformer.ConformerEncoder`. Attention masks only with
    ``ssm_attention``; the SSM and the conv are causal."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg, StateformerLayer)
        self.uses_attention = cfg.ssm_attention

    # ---- streaming --------------------------------------------------------------------------
    def state_specs(self, batch_size: int, left_frames: int) -> list[StateSpec]:
        """[attn_cache (only with attention), ssm_state (L, N, H, S, 2), conv_cache, processed]."""
        c, n = self.cfg, batch_size
        specs = [self.attn_cache_spec(n, left_frames)] if c.ssm_attention else []
        return specs + [
            StateSpec(
                "ssm_state", (c.num_layers, n, c.ssm_heads, c.ssm_state_dim, 2), torch.float32, 1
            ),
            self.conv_cache_spec(n),
            StateSpec("processed", (n,), torch.int64, 0),
        ]

    def streaming_forward(
        self, x: Tensor, x_lens: Tensor, states: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """One chunk. x: (N, 4C + 3, F) fbank window; x_lens: (N,) valid fbank frames in it.
        Returns (N, C, D), valid frames (N,), new states (same order as :meth:`state_specs`)."""
        x, lens = self.embed(x, x_lens)
        x, new_states = self.streaming_layers(x, lens, states)
        return self.out_norm(x), lens, new_states

    def streaming_layers(
        self, x: Tensor, lens: Tensor, states: list[Tensor]
    ) -> tuple[Tensor, list[Tensor]]:
        """The layers of one chunk after the subsampling (no output norm): x (N, C, D)
        subsampled, lens (N,) its valid frames -> (N, C, D), new states (see
        :meth:`asrq.models.conformer.ConformerEncoder.streaming_layers`)."""
        attn_cache = states[0] if self.cfg.ssm_attention else None
        ssm_state, conv_cache, processed = states[-3:]
        c = x.shape[1]
        mask = None if attn_cache is None else self.chunk_mask(attn_cache, c, processed, lens)
        new_ssm, new_conv, new_attn = [], [], []
        for i, layer in enumerate(self.layers):
            x, s, cc, a = layer.streaming_forward(
                x, mask, ssm_state[i], conv_cache[i], None if attn_cache is None else attn_cache[i]
            )
            new_ssm.append(s)
            new_conv.append(cc)
            new_attn.append(a)
        out = [torch.stack(new_ssm), torch.stack(new_conv), processed + c]
        if attn_cache is not None:
            out.insert(0, torch.stack(new_attn))
        return x, out
