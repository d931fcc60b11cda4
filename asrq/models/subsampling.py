"""Convolutional front-end: x4 subsampling of fbank frames (10 ms -> 40 ms).

Two 3x3 convolutions with stride 2 and no time padding: output frame ``j`` sees input frames
``4j .. 4j+6``. Hence a full utterance of ``T`` frames gives ``((T - 1) // 2 - 1) // 2`` frames,
and a streaming window of ``4C + 3`` frames (``C`` chunk frames plus 3 frames shared with the
next window) gives exactly ``C`` frames, identical to the full-utterance computation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Input frames a streaming window carries beyond ``subsampling * chunk`` (the receptive field
#: overlap).
RIGHT_CONTEXT_FRAMES = 3


def subsampled_lengths(x_lens: Tensor) -> Tensor:
    """Frame counts after :class:`Conv2dSubsampling`; ``(N,)`` -> ``(N,)``."""
    return torch.clamp(((x_lens - 1) // 2 - 1) // 2, min=0)


class Conv2dSubsampling(nn.Module):
    """``(N, T, F)`` fbank -> ``(N, T', D)`` with ``T' = ((T - 1) // 2 - 1) // 2``.

    Args:
        feature_dim: F, fbank bins (80).
        d_model: D, output width.
        channels: convolution channels (kept small: this runs over 100 frames/s).
    """

    def __init__(
        self, feature_dim: int, d_model: int, channels: int = 64, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, stride=2),
            nn.SiLU(),
            nn.Conv2d(channels, channels, kernel_size=3, stride=2),
            nn.SiLU(),
        )
        freq = ((feature_dim - 1) // 2 - 1) // 2
        self.out = nn.Linear(channels * freq, d_model)
        self.dropout = nn.Dropout(dropout)
        # global CMVN (WeNet's global_cmvn): set from training data, saved and exported with the
        # weights
        self.register_buffer("feat_mean", torch.zeros(feature_dim))
        self.register_buffer("feat_inv_std", torch.ones(feature_dim))

    @torch.no_grad()
    def set_feature_stats(self, mean: Tensor, std: Tensor) -> None:
        """Per-bin fbank statistics ``(F,)`` used to normalise the input."""
        self.feat_mean.copy_(mean)
        self.feat_inv_std.copy_(1.0 / std.clamp(min=1e-3))

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """x: (N, T, F), x_lens: (N,) -> ((N, T', D), (N,))."""
        x = (x - self.feat_mean) * self.feat_inv_std
        x = self.conv(x.unsqueeze(1))  # (N, C, T', F')
        n, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(n, t, c * f))
        return self.dropout(x), subsampled_lengths(x_lens)
