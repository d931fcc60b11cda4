"""Alpha-divergence for in-place knowledge distillation (AlphaNet: Wang et al., "AlphaNet:
Improved Training of Supernets with Alpha-Divergence", ICML 2021; the TODM paper uses it).

Teacher ``p``, student ``q`` (distributions over the last axis), importance weight
``w = clamp((p / q)^alpha, 0, clip)``::

    D_alpha(p || q) = sum_i q_i (w_i - 1) / (alpha (alpha - 1))

Without the clip this is Amari's alpha-divergence: ``alpha -> 1`` gives KL(p || q) (mass
covering: the student must cover every mode of the teacher), ``alpha -> 0`` gives KL(q || p)
(mode seeking); ``alpha < 0`` punishes a student that overestimates the teacher, ``alpha > 1``
one that underestimates it. The formula is 0 / 0 at those two points, so there we use the
limits, as AlphaNet's code does (within ``1e-3``): ``alpha = 1``: ``sum p (log p - log q)``
(unclipped), ``alpha = 0``: ``sum q (-log clamp(p / q, 0, clip))``.

**Gradient.** As in AlphaNet, the value is the formula above, but its gradient with respect
to the student is that of the *unclipped* divergence with the clipped weight ``w`` in place of
``(p / q)^alpha``: ``dD / dq_i = -(w_i / alpha + 1 / (alpha (alpha - 1)))``; at alpha = 1 it is
KL's ``-p_i / q_i``, at alpha = 0 ``1 - log clamp(p_i / q_i, 0, clip)``. It is written as the
surrogate
``-sum q.detach() * rho * log q`` (whose gradient through ``log q`` is exactly that) added as
``value + (surrogate - surrogate.detach())``, so the returned tensor has the divergence's value
and AlphaNet's gradient. The clip bounds the weights (hence the gradient's variance) where the
student puts almost no mass on a token the teacher likes (``alpha > 0``) or vice versa
(``alpha < 0``); differentiating through ``clamp`` instead would zero those gradients.

**Adaptive** (:func:`adaptive_alpha_divergence`): evaluate ``alpha_min`` (< 0) and
``alpha_max`` (> 0) and keep, per distribution (per frame / lattice node; AlphaNet: per
sample), the larger divergence with its gradient, so the student is pushed on whichever side
it currently errs worst (over- or under-estimation of the teacher).

The teacher is always detached here: ``log_p`` gets no gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: alphas within this distance of 0 or 1 use the limit forms (as AlphaNet)
LIMIT_EPS = 1e-3


def _value_and_rho(
    log_p: Tensor, log_q: Tensor, alpha: float, clip: float
) -> tuple[Tensor, Tensor]:
    """Per-element ``q * f`` (summing to D over the last axis) and ``rho`` (the gradient weight).
    log_p, log_q: (..., V) log-probabilities."""
    log_r = log_p - log_q  # log importance ratio
    q = log_q.exp()
    log_clip = math.log(clip)
    if abs(alpha - 1.0) < LIMIT_EPS:  # KL(p || q)
        r = log_r.exp()
        return log_p.exp() * log_r, r
    if abs(alpha) < LIMIT_EPS:  # KL(q || p), ratio clipped
        log_rc = log_r.clamp(max=log_clip)
        return q * -log_rc, log_rc - 1.0
    w = torch.exp((alpha * log_r).clamp(max=log_clip))  # clamp((p / q)^alpha, 0, clip)
    base = 1.0 / (alpha * (alpha - 1.0))
    return q * (w - 1.0) * base, w / alpha + base


def alpha_divergence(log_p: Tensor, log_q: Tensor, alpha: float, clip: float = 5.0) -> Tensor:
    """``D_alpha(p || q)`` per distribution: log_p (teacher), log_q (student) ``(..., V)`` ->
    ``(...)``. Value: the clipped formula (limits at alpha 0 / 1); gradient: AlphaNet's (module
    doc). ``log_p`` is treated as a constant."""
    if clip <= 0:
        raise ValueError(f"alpha_divergence: clip must be > 0, got {clip}")
    if log_p.shape != log_q.shape:
        raise ValueError(
            f"alpha_divergence: shapes differ {tuple(log_p.shape)} vs {tuple(log_q.shape)}"
        )
    log_p = log_p.detach()
    with torch.no_grad():
        terms, rho = _value_and_rho(log_p, log_q.detach(), alpha, clip)
        value = terms.sum(dim=-1)
    surrogate = -(log_q.detach().exp() * rho * log_q).sum(dim=-1)
    return value + (surrogate - surrogate.detach())


def adaptive_alpha_divergence(
    log_p: Tensor, log_q: Tensor, alpha_min: float = -1.0, alpha_max: float = 1.0, clip: float = 5.0
) -> tuple[Tensor, Tensor]:
    """The larger of ``D_alpha_min`` and ``D_alpha_max`` per distribution, with its gradient.

    log_p (teacher), log_q (student): ``(..., V)``. Returns the divergences ``(...)`` and a
    bool ``(...)`` that is True where ``alpha_min`` was chosen."""
    d_min = alpha_divergence(log_p, log_q, alpha_min, clip)
    d_max = alpha_divergence(log_p, log_q, alpha_max, clip)
    use_min = d_min.detach() > d_max.detach()
    return torch.where(use_min, d_min, d_max), use_min
