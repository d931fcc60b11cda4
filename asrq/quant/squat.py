"""SQuAT: sharpness- and quantization-aware training, as alternating steps.

Even steps (``step % 2 == 0``) are sharpness-aware (SAM, Foret et al. 2021) steps on the network
weights with the quantizers' step sizes frozen::

    g     = dL/dw (w)                       # at the current weights, fake-quant forward
    eps   = rho * g / ||g||                 # ||.|| over all network weights together
    g_sam = dL/dw (w + eps)                 # second forward/backward at the perturbed weights
    w     <- optimizer(w, g_sam)            # eps removed before the update

Odd steps are plain steps on the quantizer parameters (LSQ step sizes; the weights frozen):
``s <- optimizer(s, dL/ds)``. Freezing is done by dropping the other set's gradients before
``optimizer.step()`` (ScaledAdam and AdamW skip parameters without a gradient), so one optimizer
with both parameter sets serves both kinds of step and checkpoints as usual.

The quantizers use the STE (LSQ) estimator. The weight perturbation is applied to the float
weights, i.e. *before* fake quantization, so SAM sees the sharpness of the quantized network.
The paper's exact schedule was not available to us: this alternation (1:1, SAM radius ``rho``
from ``QuantConfig.squat_rho``) is our reading of "alternate a sharpness-aware step on the
weights with a step on the quantizer step sizes".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def is_weight_step(step: int) -> bool:
    """SQuAT's alternation: even steps update the weights (SAM), odd ones the step sizes."""
    return step % 2 == 0


def squat_step(
    optimizer: torch.optim.Optimizer,
    weights: Sequence[nn.Parameter],
    quant_params: Sequence[nn.Parameter],
    closure: Callable[[], Tensor],
    step: int,
    rho: float,
) -> tuple[Tensor, str]:
    """One SQuAT step. ``closure()`` zeroes the gradients, computes the loss, runs ``backward``
    and returns the loss. Returns (the loss at the unperturbed weights, ``"weights"`` or
    ``"scales"``)."""
    loss = closure()
    if is_weight_step(step):
        live = [p for p in weights if p.grad is not None]
        with torch.no_grad():
            norm = (
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in live])) if live else 0
            )
            eps = [rho * p.grad / (norm + 1e-12) for p in live]
            for p, e in zip(live, eps, strict=True):
                p.add_(e)
        closure()
        with torch.no_grad():
            for p, e in zip(live, eps, strict=True):
                p.sub_(e)
        for p in quant_params:
            p.grad = None
        optimizer.step()
        return loss, "weights"
    for p in weights:
        p.grad = None
    optimizer.step()
    return loss, "scales"
