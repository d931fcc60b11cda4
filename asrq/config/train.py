"""Training configs: optimizer, loss, the training loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from asrq.config.checks import _check


@dataclass
class OptimConfig:
    """ScaledAdam + Eden (icefall). ``lr_batches``/``lr_epochs`` are Eden's decay constants."""

    name: Literal["scaled_adam", "adamw"] = "scaled_adam"
    lr: float = 0.045
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    clipping_scale: float = 2.0
    weight_decay: float = 0.0
    lr_batches: float = 5000.0
    lr_epochs: float = 6.0
    warmup_batches: float = 300.0
    warmup_start: float = 0.5

    def __post_init__(self) -> None:
        _check(self.lr > 0, "train.optim.lr must be > 0")
        _check(len(self.betas) == 2, "train.optim.betas must have two values")


@dataclass
class LossConfig:
    """RNN-T loss setup. ``rnnt_type``: ``pruned`` (k2-style, written in PyTorch) or ``full``
    (torchaudio). The pruned loss is ``simple_loss_scale * simple + pruned``; both scales ramp
    over ``warm_steps`` as in icefall.

    ``ctc_weight`` is lambda of both heads: ``(1 - lambda) * rnnt + lambda * ctc`` (rnnt) and
    ``lambda * ctc + (1 - lambda) * attention`` (ctc_attention; WeNet uses 0.3)."""

    rnnt_type: Literal["pruned", "full"] = "pruned"
    prune_range: int = 5
    simple_loss_scale: float = 0.5
    lm_only_scale: float = 0.25
    am_only_scale: float = 0.0
    ctc_weight: float = 0.2
    warm_steps: int = 400
    label_smoothing: float = 0.1  # attention-decoder loss (model.head ctc_attention)

    def __post_init__(self) -> None:
        _check(self.prune_range >= 1, "train.loss.prune_range must be >= 1")
        _check(0.0 <= self.ctc_weight <= 1.0, "train.loss.ctc_weight in [0, 1]")
        _check(0.0 <= self.label_smoothing < 1.0, "train.loss.label_smoothing in [0, 1)")


@dataclass
class TrainConfig:
    exp_dir: str = "exp/mini"
    seed: int = 42
    max_steps: int = 0  # 0: no step limit
    max_minutes: float = 0.0  # 0: no time limit
    max_epochs: int = 100
    log_every: int = 25
    save_every: int = 200
    keep_last: int = 3
    eval_every_minutes: float = 0.0  # >0: greedy dev WER at this interval (the WER curve)
    eval_max_utts: int = 60
    # recipes only: >1 runs the train stage as `torchrun --nproc-per-node num_procs` (DDP, gloo,
    # one intra-op thread per process; measured on 2 cores: ~10% more audio/s than one process
    # with two threads, at twice the batch per step). data.max_duration is then per process.
    num_procs: int = 1
    # Weight averaging (icefall's model_avg, as an EMA): the averaged weights are what dev WER,
    # decoding and export use. Per-step decay (0 = off), warmed up as min(decay, (1+s)/(10+s));
    # updated every `average_every` steps. 0.995 averages roughly the last ~200 steps.
    average_decay: float = 0.995
    average_every: int = 5
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        _check(self.max_steps >= 0 and self.max_minutes >= 0, "train limits must be >= 0")
        _check(self.num_procs >= 1, "train.num_procs must be >= 1")
        _check(
            0.0 <= self.average_decay < 1.0,
            f"train.average_decay must be in [0, 1), got {self.average_decay}",
        )
        _check(
            self.average_every >= 1, f"train.average_every must be >= 1, got {self.average_every}"
        )
