"""Supernet configs (TODM: train once, deploy many; asrq.supernet): the search space and
the sandwich / distillation / adaptive dropout settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from asrq.config.checks import _check


@dataclass
class SearchSpaceConfig:
    """Choices per elastic dimension of a supernet (asrq.supernet.spec.SearchSpace). An empty
    list fixes the dimension at the supernet's value; otherwise the largest choice must be the
    supernet's value (the supernet is its own largest subnet). Subnets take the first layers,
    channels and heads of the supernet (asrq.supernet.elastic)."""

    num_layers: list[int] = field(default_factory=list)  # encoder layers
    d_model: list[int] = field(default_factory=list)  # encoder width
    ffn_dim: list[int] = field(default_factory=list)  # encoder FFN width
    num_heads: list[int] = field(default_factory=list)  # attention heads (Conformer, ssm_attention)
    ssm_heads: list[int] = field(default_factory=list)  # MH-SSM heads (Stateformer)
    joiner_dim: list[int] = field(default_factory=list)
    predictor_dim: list[int] = field(default_factory=list)  # predictor d_model

    def __post_init__(self) -> None:
        for name in (
            "num_layers",
            "d_model",
            "ffn_dim",
            "num_heads",
            "ssm_heads",
            "joiner_dim",
            "predictor_dim",
        ):
            choices = getattr(self, name)
            _check(
                all(c >= 1 for c in choices),
                f"supernet.search_space.{name}: choices must be >= 1, got {choices}",
            )
            _check(
                len(set(choices)) == len(choices),
                f"supernet.search_space.{name}: duplicate choices {choices}",
            )


@dataclass
class SupernetConfig:
    """Supernet training (asrq.supernet.train): each step trains the largest, the smallest and
    ``num_random`` random subnets of ``search_space`` (the sandwich rule); every subnet but the
    largest adds ``kd_weight`` x the adaptive alpha-divergence (asrq.losses.alpha_divergence,
    AlphaNet's form with ``alpha_min`` / ``alpha_max`` / ``alpha_clip``) towards the largest
    subnet's detached output, on the CTC frame posteriors and/or the RNN-T joiner output over
    the pruned lattice (``kd_on``).

    Adaptive dropout: a subnet trains with encoder dropout
    ``dropout_min + (dropout_max - dropout_min) * (params / params_largest) ** dropout_power``
    (``dropout_max`` None: model.encoder.dropout; ``adaptive_dropout`` false: every subnet uses
    model.encoder.dropout)."""

    search_space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)
    num_random: int = 2
    # OFA-style warm-up: the first `warmup_steps` steps train only the largest subnet (no sandwich,
    # no distillation), so the shared weights leave the CTC blank plateau before the small
    # subnets pull on them.
    warmup_steps: int = 0
    # Random subnets drawn from this list of specs (SubnetSpec fields; missing: the supernet's
    # value) instead of per dimension from search_space, e.g. the sizes meant for deployment.
    sample_pool: list[dict[str, int]] = field(default_factory=list)
    kd_weight: float = 1.0
    # The distillation weight ramps linearly from 0 to kd_weight over the kd_ramp_steps steps
    # after kd_start_step (a teacher that is itself still on the blank plateau, with full
    # weight, drags the shared weights more than it teaches: see the README's TODM section).
    kd_start_step: int = 0
    kd_ramp_steps: int = 0
    kd_on: Literal["ctc", "rnnt", "both"] = "both"
    alpha_min: float = -1.0
    alpha_max: float = 1.0
    alpha_clip: float = 5.0
    adaptive_dropout: bool = True
    dropout_max: float | None = None
    dropout_min: float = 0.0
    dropout_power: float = 1.0

    def __post_init__(self) -> None:
        _check(self.num_random >= 0, "supernet.num_random must be >= 0")
        _check(self.warmup_steps >= 0, "supernet.warmup_steps must be >= 0")
        _check(self.kd_weight >= 0, "supernet.kd_weight must be >= 0")
        _check(
            self.kd_start_step >= 0 and self.kd_ramp_steps >= 0,
            "supernet.kd_start_step / kd_ramp_steps must be >= 0",
        )
        _check(self.alpha_min <= self.alpha_max, "supernet.alpha_min must be <= supernet.alpha_max")
        _check(self.alpha_clip > 0, "supernet.alpha_clip must be > 0")
        if self.dropout_max is not None:
            _check(0.0 <= self.dropout_max < 1.0, "supernet.dropout_max must be in [0, 1)")
        _check(0.0 <= self.dropout_min < 1.0, "supernet.dropout_min must be in [0, 1)")
        _check(self.dropout_power > 0, "supernet.dropout_power must be > 0")
