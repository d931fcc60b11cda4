"""Training losses. RNN-T: k2's full, simple, smoothed and pruned losses re-implemented in
PyTorch (:mod:`asrq.losses.rnnt`, :mod:`asrq.losses.mutual_information`), plus a wrapper
around torchaudio's fused RNN-T loss."""

from asrq.losses.mutual_information import mutual_information_recursion
from asrq.losses.rnnt import (
    do_rnnt_pruning,
    get_rnnt_logprobs,
    get_rnnt_logprobs_joint,
    get_rnnt_logprobs_pruned,
    get_rnnt_logprobs_smoothed,
    get_rnnt_prune_ranges,
    rnnt_boundary,
    rnnt_loss_full,
    rnnt_loss_pruned,
    rnnt_loss_simple,
    rnnt_loss_smoothed,
    torchaudio_rnnt_loss,
)

__all__ = [
    "mutual_information_recursion",
    "rnnt_boundary",
    "get_rnnt_logprobs",
    "get_rnnt_logprobs_smoothed",
    "get_rnnt_logprobs_joint",
    "get_rnnt_logprobs_pruned",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
    "rnnt_loss_full",
    "rnnt_loss_pruned",
    "get_rnnt_prune_ranges",
    "do_rnnt_pruning",
    "torchaudio_rnnt_loss",
]
