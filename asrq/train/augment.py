"""SpecAugment (Park et al. 2019) applied in the training process with an explicit generator.

Doing it here rather than in data-loader workers makes every batch's augmentation a function of
``(seed, step, rank)``, so ``--resume`` reproduces the next loss exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor


def spec_augment(
    feats: Tensor,
    lens: Tensor,
    gen: torch.Generator,
    num_freq_masks: int = 2,
    max_freq_width: int = 27,
    max_time_fraction: float = 0.15,
    max_time_masks: int = 10,
    max_time_width: int = 40,
) -> Tensor:
    """Mask random frequency bands and time spans with the per-utterance mean.

    feats: (N, T, F) log-mel fbank; lens: (N,) valid frames. Returns a new (N, T, F) tensor.
    One time mask per second of audio (at most ``max_time_masks``), together covering at most
    ``max_time_fraction`` of the utterance (as lhotse's SpecAugment defaults in icefall).
    """
    n, t, f = feats.shape
    out = feats.clone()
    fidx = torch.arange(f)
    tidx = torch.arange(t)
    for i in range(n):
        li = int(lens[i])
        if li == 0:
            continue
        mean = out[i, :li].mean()
        fmask = torch.zeros(f, dtype=torch.bool)
        for _ in range(num_freq_masks):
            w = int(torch.randint(0, max_freq_width + 1, (1,), generator=gen))
            s = int(torch.randint(0, max(1, f - w), (1,), generator=gen))
            fmask |= (fidx >= s) & (fidx < s + w)
        tmask = torch.zeros(t, dtype=torch.bool)
        n_t = min(max_time_masks, max(1, li // 100))
        width = max(1, min(max_time_width, int(max_time_fraction * li / n_t)))
        for _ in range(n_t):
            w = int(torch.randint(0, width + 1, (1,), generator=gen))
            s = int(torch.randint(0, max(1, li - w), (1,), generator=gen))
            tmask |= (tidx >= s) & (tidx < s + w)
        out[i][:, fmask] = mean
        out[i][tmask, :] = mean
    return out
