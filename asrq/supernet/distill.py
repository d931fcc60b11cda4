"""In-place distillation for RNN-T supernets: a training forward that exposes what a teacher
hands to its students, and the distillation loss (TODM, arXiv 2309.01947; AlphaNet's adaptive
alpha-divergence, :mod:`asrq.losses.alpha_divergence`).

:func:`transducer_outputs` is :meth:`asrq.models.transducer.Transducer.forward` (same losses,
same order of operations; a test holds them equal) that also returns the CTC log-probs, the
joiner logits on the lattice and the pruning ranges, and that accepts the ranges from outside.

**RNN-T distillation on the pruned lattice.** The teacher (the largest subnet) computes its
simple loss and, from its occupation probabilities, the pruning ranges ``(N, T, R)``; every
student of the step evaluates its joiner on *the teacher's* ranges, so teacher and student
logits ``(N, T, R, V)`` sit on the same lattice nodes ``(t, s)``. The student's pruned RNN-T
loss uses those ranges too (one joiner pass per student; a valid pruned loss, as the ranges
are monotonic for the same boundary). Per node the divergence between the teacher's and the
student's distribution over the V tokens is taken; nodes past a sequence's frames or symbols
are masked; each frame contributes the mean over its valid nodes, so the lattice term is per
frame like the CTC term. With ``train.loss.rnnt_type: full`` the lattice is the whole
``(T, S + 1)`` one.

**CTC distillation**: the divergence of the frame posteriors ``(N, T, V)`` on valid frames.

Both are sums over the batch's frames (the trainer divides every loss by the frame count);
``kd_on: both`` adds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from asrq.config import LossConfig, SupernetConfig
from asrq.losses.alpha_divergence import adaptive_alpha_divergence
from asrq.models.base import ctc_loss
from asrq.models.transducer import Transducer


@dataclass
class SubnetOutputs:
    """What one subnet's training forward produced.

    losses: ``simple``, ``pruned``, ``ctc`` (summed over the batch) and ``frames``, as
    :meth:`Transducer.forward` returns them. enc_lens: (N,). ctc_log_probs: (N, T, V) or None.
    logits: joiner logits on the lattice (N, T, R, V). lattice_s: (N, T, R) int64, the symbol
    position of each lattice node (the pruning ranges; ``arange(S + 1)`` for the full loss).
    target_lens: (N,).
    """

    losses: dict[str, Tensor]
    enc_lens: Tensor
    ctc_log_probs: Tensor | None
    logits: Tensor
    lattice_s: Tensor
    target_lens: Tensor

    def detached(self) -> SubnetOutputs:
        d = {k: v.detach() for k, v in self.losses.items()}
        ctc = None if self.ctc_log_probs is None else self.ctc_log_probs.detach()
        return SubnetOutputs(
            d, self.enc_lens, ctc, self.logits.detach(), self.lattice_s, self.target_lens
        )


def transducer_outputs(
    model: Transducer,
    x: Tensor,
    x_lens: Tensor,
    targets: Tensor,
    target_lens: Tensor,
    loss_cfg: LossConfig,
    chunk_size: int = -1,
    left_chunks: int = -1,
    ranges: Tensor | None = None,
    need_ctc: bool = False,
) -> SubnetOutputs:
    """The training forward of :class:`Transducer` (x (N, T, F), targets (N, S) padded with -1),
    keeping the outputs distillation needs. ``ranges`` (N, T', R): prune with these instead of
    the model's own (pruned loss only). ``need_ctc``: compute the CTC log-probs even when
    ``loss_cfg.ctc_weight`` is 0."""
    enc, enc_lens = model.forward_encoder(x, x_lens, chunk_size, left_chunks)  # (N, T', D)
    lat = model.transducer_lattice(enc, enc_lens, targets, target_lens, loss_cfg, ranges)
    ctc_log_probs = None
    ctc = torch.zeros((), device=enc.device)
    if model.ctc is not None and (loss_cfg.ctc_weight > 0 or need_ctc):
        ctc_log_probs = model.ctc_log_probs(enc)  # (N, T', V)
        if loss_cfg.ctc_weight > 0:
            ctc = ctc_loss(ctc_log_probs, enc_lens, targets, target_lens, model.blank_id)
    losses = {"simple": lat.simple, "pruned": lat.pruned, "ctc": ctc, "frames": enc_lens.sum()}
    return SubnetOutputs(losses, enc_lens, ctc_log_probs, lat.logits, lat.lattice_s, target_lens)


def _frame_mask(lens: Tensor, t: int) -> Tensor:
    return torch.arange(t, device=lens.device)[None, :] < lens[:, None]  # (N, T)


def distillation_loss(
    teacher: SubnetOutputs, student: SubnetOutputs, cfg: SupernetConfig
) -> dict[str, Tensor]:
    """Adaptive alpha-divergence of the student from the (detached) teacher, summed over valid
    frames: ``kd_ctc`` and / or ``kd_rnnt`` (per ``cfg.kd_on``; see the module doc)."""
    out: dict[str, Tensor] = {}
    frames = _frame_mask(teacher.enc_lens, teacher.logits.shape[1])  # (N, T)

    def div(log_p: Tensor, log_q: Tensor) -> Tensor:
        return adaptive_alpha_divergence(
            log_p, log_q, cfg.alpha_min, cfg.alpha_max, cfg.alpha_clip
        )[0]

    if cfg.kd_on in ("ctc", "both"):
        if teacher.ctc_log_probs is None or student.ctc_log_probs is None:
            raise RuntimeError(
                "CTC distillation needs the CTC head's log-probs (model.rnnt.ctc_head: true)"
            )
        d = div(teacher.ctc_log_probs.detach().float(), student.ctc_log_probs.float())  # (N, T)
        out["kd_ctc"] = (d * frames).sum()
    if cfg.kd_on in ("rnnt", "both"):
        if not torch.equal(teacher.lattice_s, student.lattice_s):
            raise RuntimeError(
                "lattice distillation needs the student on the teacher's pruning ranges"
            )
        log_p = teacher.logits.detach().float().log_softmax(dim=-1)
        log_q = student.logits.float().log_softmax(dim=-1)
        d = div(log_p, log_q)  # (N, T, R)
        nodes = (teacher.lattice_s <= teacher.target_lens[:, None, None]) & frames[:, :, None]
        per_frame = (d * nodes).sum(dim=2) / nodes.sum(dim=2).clamp(min=1)
        out["kd_rnnt"] = per_frame.sum()
    return out
