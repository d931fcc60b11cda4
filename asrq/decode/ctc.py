"""CTC greedy decoding (best path): argmax per frame, collapse repeats, drop blanks."""

from __future__ import annotations

import torch
from torch import Tensor


def ctc_greedy(log_probs: Tensor, lens: Tensor, blank: int = 0) -> list[list[int]]:
    """log_probs (N, T, V) (or logits: only the argmax matters), lens (N,) valid frames
    -> token ids of each utterance.

    A repeated symbol is emitted once unless a blank separates the repeats
    (``a a <b> a`` -> ``a a``).
    """
    if log_probs.dim() != 3:
        raise ValueError(f"expected log_probs (N, T, V), got shape {tuple(log_probs.shape)}")
    n, t, _ = log_probs.shape
    if t == 0:
        return [[] for _ in range(n)]
    ids = log_probs.argmax(dim=-1)  # (N, T)
    prev = torch.cat([torch.full_like(ids[:, :1], -1), ids[:, :-1]], dim=1)
    valid = torch.arange(t, device=ids.device)[None, :] < lens.to(ids.device)[:, None]
    keep = (ids != prev) & (ids != blank) & valid
    return [row[k].tolist() for row, k in zip(ids.cpu(), keep.cpu(), strict=True)]
