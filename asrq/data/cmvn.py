"""Global feature statistics (CMVN) from a sample of training cuts."""

from __future__ import annotations

from pathlib import Path

import torch


def feature_stats(cuts_paths: list[Path], max_cuts: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin mean and std ``(F,)`` of the precomputed features of the first ``max_cuts`` cuts."""
    from asrq.data.loader import load_cuts

    total, total_sq, frames = None, None, 0
    n = 0
    for path in cuts_paths:
        for cut in load_cuts(path, lazy=True):
            f = torch.from_numpy(cut.load_features()).double()  # (T, F)
            total = f.sum(0) if total is None else total + f.sum(0)
            total_sq = (f * f).sum(0) if total_sq is None else total_sq + (f * f).sum(0)
            frames += f.shape[0]
            n += 1
            if n >= max_cuts:
                break
        if n >= max_cuts:
            break
    if total is None or frames == 0:
        raise ValueError("no features found for CMVN")
    mean = total / frames
    std = (total_sq / frames - mean * mean).clamp(min=1e-8).sqrt()
    return mean.float(), std.float()
