"""Export-time rewrites (STYLE.md point 6): functions from a module to a module.

:func:`xnnpack_friendly`: XNNPACK has no LayerNorm, so each ``nn.LayerNorm`` becomes the same
arithmetic written with ops it does take, which more than halves the delegate partitions (and
the lowering time). The ExecuTorch exporter applies it (:mod:`asrq.export.executorch_export`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DecomposedLayerNorm(nn.Module):
    """``nn.LayerNorm`` over the last axis written as linear + elementwise ops.

    The mean and variance over ``D`` are a linear map with a constant ``(1, D)`` weight of
    ``1 / D``, so the whole norm lowers to XNNPACK (which has no LayerNorm and only 4-D means) for
    any leading shape, dynamic ones included. Same arithmetic as ``F.layer_norm`` (biased
    variance, ``eps`` inside the square root); differences are float rounding (~1e-7).
    """

    def __init__(self, ln: nn.LayerNorm) -> None:
        super().__init__()
        if len(ln.normalized_shape) != 1:
            raise ValueError("DecomposedLayerNorm handles a norm over the last axis only")
        d = ln.normalized_shape[0]
        self.eps = ln.eps
        self.weight = ln.weight
        self.bias = ln.bias
        self.register_buffer("avg", torch.full((1, d), 1.0 / d), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        d = x - F.linear(x, self.avg)
        y = d * torch.rsqrt(F.linear(d * d, self.avg) + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


def xnnpack_friendly(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every ``nn.LayerNorm`` replaced by
    :class:`DecomposedLayerNorm`."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(parent, name, DecomposedLayerNorm(child))
    return module
