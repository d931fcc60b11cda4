"""ScaledAdam optimizer and Eden learning-rate schedule.

A re-implementation of the math in icefall's Zipformer ``optim.py`` (k2-fsa/icefall,
``egs/librispeech/ASR/zipformer/optim.py``, Daniel Povey, Apache-2.0), written as a plain
per-parameter loop. Per step, for a parameter ``p`` with gradient ``g``:

1. **Clipping.** The "normalized" gradient norm of the group is
   ``norm = sqrt(sum_p (rms(p) * |g_p|)^2)`` (scalars use ``scalar_lr_scale`` in place of
   ``rms(p)``), since each update is scaled by ``rms(p)``. Norms of the last
   ``clipping_update_period`` steps are kept; every ``clipping_update_period`` steps (and at
   steps 10, 20, 40 with a doubled threshold) the threshold is reset to
   ``clipping_scale * median``. Gradients are scaled by ``min(1, threshold / norm)``.
   A non-finite norm skips the whole step (no parameter or state change).
2. **Direction (non-scalar ``p``).** ``v = beta2 v + (1 - beta2) g^2``;
   ``delta = beta1 delta - lr (1 - beta1) max(rms(p), param_min_rms) g / (sqrt(v / bc2) + eps)``
   with ``bc2 = 1 - beta2^(t+1)``; no first-moment bias correction (on purpose, as icefall:
   smaller first steps are more stable). ``rms(p)`` is refreshed every ``size_update_period``.
3. **Scale (non-scalar ``p``).** Every ``size_update_period`` steps, Adam on the log-scale of
   ``p`` with gradient ``sum(p * g)`` and lr ``lr * scalar_lr_scale``:
   ``delta += (1 - beta1) * scale_step * p``; it never shrinks a ``p`` with
   ``rms < param_min_rms`` and never grows ``rms(p)`` beyond ``param_max_rms``.
4. **Scalars** (``numel == 1``) get plain Adam with lr ``lr * scalar_lr_scale``, clamped to
   ``[-scalar_max, scalar_max]``.
5. ``p += delta`` (``delta`` is the momentum of the whole change).

Caveat inherited from icefall: a parameter initialized to all zeros (e.g. a LayerNorm bias)
starts with updates of size ``lr * param_min_rms`` and grows only geometrically afterwards.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from asrq.config import OptimConfig
from asrq.utils.io import AsrqError

log = logging.getLogger(__name__)


def _rms(p: Tensor) -> float:
    """Root-mean-square value of ``p`` as a Python float."""
    return torch.linalg.vector_norm(p).item() / math.sqrt(p.numel())


def _quartiles(sorted_norms: list[float]) -> list[float]:
    """Min, quartiles and max of an ascending list, indexed as icefall does."""
    n = len(sorted_norms)
    return [sorted_norms[min(n - 1, (n // 4) * k)] for k in range(5)]


class ScaledAdam(torch.optim.Optimizer):
    """Adam whose updates are scaled by each parameter tensor's RMS, plus a learned overall
    scale per tensor and gradient clipping against the median recent gradient norm.

    Args:
        params: parameters, ``(name, parameter)`` pairs (``model.named_parameters()``), or
            param-group dicts of either; names are used to log the parameter that dominates
            a heavily clipped gradient.
        lr: learning rate (icefall uses 0.03-0.045, with :class:`Eden`).
        clipping_scale: clip the normalized gradient norm to this times the recent median;
            ``None`` disables clipping (non-finite steps are still skipped).
        betas: momentum and second-moment decay.
        scalar_lr_scale: lr factor for scalar parameters and for the scale of non-scalars.
        eps: added to the second-moment root.
        param_min_rms, param_max_rms: bounds on the RMS used to scale updates (min) and on the
            RMS the learned scale may grow a tensor to (max).
        scalar_max: scalar parameters are clamped to ``[-scalar_max, scalar_max]``.
        size_update_period: steps between updates of the learned scale (and of ``rms(p)``).
        clipping_update_period: steps of gradient norms the clipping median covers.
    """

    #: warn when more than this fraction of the steps since the last threshold update clipped
    CLIPPED_WARN_FRACTION = 0.1
    #: raise after this many consecutive steps with a non-finite gradient
    MAX_CONSECUTIVE_NONFINITE = 50

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.045,
        clipping_scale: float | None = 2.0,
        betas: tuple[float, float] = (0.9, 0.98),
        scalar_lr_scale: float = 0.1,
        eps: float = 1e-8,
        param_min_rms: float = 1e-5,
        param_max_rms: float = 3.0,
        scalar_max: float = 10.0,
        size_update_period: int = 4,
        clipping_update_period: int = 100,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"ScaledAdam: lr must be > 0, got {lr}")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 < betas[1] < 1.0:
            raise ValueError(f"ScaledAdam: betas must be in [0, 1), got {betas}")
        if not 0 < param_min_rms < param_max_rms:
            raise ValueError("ScaledAdam: need 0 < param_min_rms < param_max_rms")
        if size_update_period < 1 or clipping_update_period < 1:
            raise ValueError("ScaledAdam: update periods must be >= 1")
        defaults = dict(
            lr=lr,
            clipping_scale=clipping_scale,
            betas=tuple(betas),
            scalar_lr_scale=scalar_lr_scale,
            eps=eps,
            param_min_rms=param_min_rms,
            param_max_rms=param_max_rms,
            scalar_max=scalar_max,
            size_update_period=size_update_period,
            clipping_update_period=clipping_update_period,
        )
        super().__init__(params, defaults)

    @property
    def parameters_names(self) -> list[list[str]]:
        """Names of the parameters per group (``param{i}`` where none were given)."""
        return [
            g.get("param_names") or [f"param{i}" for i in range(len(g["params"]))]
            for g in self.param_groups
        ]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`. Deep-copies it first, so loading from an in-memory state
        dict never shares tensors with the optimizer that produced it."""
        super().load_state_dict(copy.deepcopy(state_dict))

    # ----------------------------------------------------------------------------------------
    # step
    # ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One optimization step over every parameter that has a ``.grad``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            live = [p for p in group["params"] if p.grad is not None]
            if not live:
                continue
            for p in live:
                if p.grad.is_sparse:
                    raise RuntimeError("ScaledAdam does not support sparse gradients")
                if "step" not in self.state[p]:
                    self._init_state(group, p, self.state[p])
            # Group-wide clipping statistics live in the state of the group's first parameter
            # (as in icefall), so the standard state_dict saves and restores them.
            factor = self._clipping_factor(group, self.state[group["params"][0]], live)
            if factor is None:
                continue
            for p in live:
                grad = p.grad if factor == 1.0 else p.grad * factor
                self._update(group, p, grad, self.state[p])
        return loss

    def _init_state(self, group: dict, p: Tensor, state: dict) -> None:
        state["step"] = 0
        state["delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if p.numel() > 1:
            state["param_rms"] = _rms(p)
            # sum(p * g) of the last size_update_period steps, as 0-dim tensors (a list, so that
            # storing one costs no tensor indexing)
            state["scale_grads"] = [p.new_zeros(()) for _ in range(group["size_update_period"])]
            state["scale_exp_avg_sq"] = 0.0

    def _name(self, group: dict, p: Tensor) -> str:
        index = next(i for i, q in enumerate(group["params"]) if q is p)
        names = group.get("param_names")
        return names[index] if names else f"param{index}"

    def _clipping_factor(self, group: dict, gstate: dict, live: list[Tensor]) -> float | None:
        """Factor (<= 1) to scale this step's gradients by, or None to skip the step."""
        scalar_lr_scale = group["scalar_lr_scale"]
        weights = [
            scalar_lr_scale
            if p.numel() == 1
            else max(self.state[p]["param_rms"], group["param_min_rms"])
            for p in live
        ]
        # Per-tensor contribution (rms(p) * |g|)^2, summed in float64 on the host.
        norms = torch.stack(torch._foreach_norm([p.grad for p in live])).double().cpu()
        sumsq = (norms * torch.tensor(weights, dtype=torch.float64)) ** 2
        tot_norm = sumsq.sum().sqrt().item()

        if not math.isfinite(tot_norm):
            bad = gstate.get("clip_nonfinite_in_a_row", 0) + 1
            gstate["clip_nonfinite_in_a_row"] = bad
            sums = sumsq.tolist()
            nonfinite = [
                self._name(group, p)
                for p, s in zip(live, sums, strict=True)
                if not math.isfinite(s)
            ]
            log.warning(
                "ScaledAdam: non-finite gradient (norm=%s) in %s; skipping this step (%d in a row)",
                tot_norm,
                ", ".join(nonfinite[:5]),
                bad,
            )
            if bad >= self.MAX_CONSECUTIVE_NONFINITE:
                raise RuntimeError(
                    f"ScaledAdam: {bad} consecutive steps had non-finite gradients; training "
                    "diverged"
                )
            return None
        gstate["clip_nonfinite_in_a_row"] = 0

        clipping_scale = group["clipping_scale"]
        if clipping_scale is None or clipping_scale <= 0:
            return 1.0
        period = group["clipping_update_period"]
        step = gstate.get("clip_step", 0)
        if "clip_norms" not in gstate:
            # a list of Python floats: state_dict round trips keep it exact (tensors would be
            # cast to the parameter's dtype on load)
            gstate["clip_norms"] = [0.0] * period
            gstate["clip_num_clipped"] = 0
        gstate["clip_norms"][step % period] = tot_norm
        gstate["clip_step"] = step + 1

        early_steps = [s for s in (10, 20, 40) if s < period]
        if step > 0 and (step % period == 0 or step in early_steps):
            recorded = gstate["clip_norms"] if step >= period else gstate["clip_norms"][: step + 1]
            quartiles = _quartiles(sorted(recorded))
            threshold = clipping_scale * quartiles[2] * (2.0 if step in early_steps else 1.0)
            frac_clipped = gstate["clip_num_clipped"] / len(recorded)
            gstate["clip_threshold"] = threshold
            gstate["clip_num_clipped"] = 0
            level = logging.WARNING if frac_clipped > self.CLIPPED_WARN_FRACTION else logging.INFO
            log.log(
                level,
                "ScaledAdam clipping_scale=%g, grad-norm quartiles %s, threshold=%.3e, "
                "percent-clipped=%.1f",
                clipping_scale,
                " ".join(f"{q:.3e}" for q in quartiles),
                threshold,
                100 * frac_clipped,
            )
        if "clip_threshold" not in gstate:
            return 1.0
        factor = min(1.0, gstate["clip_threshold"] / (tot_norm + 1e-20))
        if factor < 1.0:
            gstate["clip_num_clipped"] += 1
        if factor < 0.1:
            top = int(sumsq.argmax())
            log.warning(
                "ScaledAdam: scaling gradients by %.3g (norm %.3e, threshold %.3e); "
                "dominant parameter %s with %.0f%% of the squared norm",
                factor,
                tot_norm,
                gstate["clip_threshold"],
                self._name(group, live[top]),
                100 * sumsq[top].item() / max(sumsq.sum().item(), 1e-40),
            )
        return factor

    def _update(self, group: dict, p: Tensor, grad: Tensor, state: dict) -> None:
        """Momentum-decay ``delta``, add the scale and direction updates, apply it to ``p``."""
        beta1, beta2 = group["betas"]
        step = state["step"]
        delta, exp_avg_sq = state["delta"], state["exp_avg_sq"]
        delta.mul_(beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # Adam's sqrt(v / bc2) + eps, computed as (sqrt(v) + eps * sqrt(bc2)) / sqrt(bc2) so that
        # the bias correction costs no extra pass over the tensor.
        sqrt_bc2 = math.sqrt(1.0 - beta2 ** (step + 1))
        denom = exp_avg_sq.sqrt().add_(group["eps"] * sqrt_bc2)
        if p.numel() == 1:
            lr = group["lr"] * group["scalar_lr_scale"]
            delta.addcdiv_(grad, denom, value=-lr * (1 - beta1) * sqrt_bc2)
            p.add_(delta).clamp_(-group["scalar_max"], group["scalar_max"])
        else:
            period = group["size_update_period"]
            state["scale_grads"][step % period] = torch.dot(p.reshape(-1), grad.reshape(-1))
            if step % period == period - 1:
                state["param_rms"] = _rms(p)
                if step > 0:
                    self._size_update(group, p, state)
            rms = max(state["param_rms"], group["param_min_rms"])
            delta.addcdiv_(grad, denom, value=-group["lr"] * (1 - beta1) * rms * sqrt_bc2)
            p.add_(delta)
        state["step"] = step + 1

    def _size_update(self, group: dict, p: Tensor, state: dict) -> None:
        """Adam step on the log-scale of ``p`` from the last ``size_update_period`` gradients
        ``sum(p * g)``; adds ``(1 - beta1) * scale_step * p`` to ``delta``."""
        beta1, beta2 = group["betas"]
        scale_grads = torch.stack(state["scale_grads"]).double().tolist()
        period = len(scale_grads)
        beta2_corr = beta2**period  # one size update per `period` steps: faster decay
        mean_sq = sum(g * g for g in scale_grads) / period
        avg = beta2_corr * state["scale_exp_avg_sq"] + (1 - beta2_corr) * mean_sq
        state["scale_exp_avg_sq"] = avg
        size_step = (state["step"] + 1) // period
        bias_correction2 = 1 - beta2_corr**size_step
        denom = math.sqrt(avg) + group["eps"]
        size_lr = group["lr"] * group["scalar_lr_scale"]
        scale_step = -size_lr * math.sqrt(bias_correction2) * sum(scale_grads) / denom
        rms = state["param_rms"]
        if rms < group["param_min_rms"]:
            return  # too small: neither shrink nor grow it through the scale
        scale_step = min(scale_step, (group["param_max_rms"] - rms) / rms)
        state["delta"].add_(p, alpha=(1 - beta1) * scale_step)


class Eden:
    """icefall's Eden schedule, driven by batch and (possibly fractional) epoch::

        lr = base_lr * ((batch^2 + lr_batches^2) / lr_batches^2) ** -0.25
                     * ((epoch^2 + lr_epochs^2) / lr_epochs^2) ** -0.25
                     * warmup,
        warmup = warmup_start + (1 - warmup_start) * batch / warmup_batches  (batch <
        warmup_batches)
               = 1                                                           (afterwards)

    ``base_lr`` is each param group's ``lr`` when the schedule is created (kept in the group
    as ``base_lr``). The group lrs are set at construction and after every
    :meth:`step_batch` / :meth:`step_epoch` / :meth:`load_state_dict`. Works with any
    ``torch.optim.Optimizer``. ``epoch`` may be a float (e.g. minutes trained / planned
    minutes * epochs in short runs).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr_batches: float = 5000.0,
        lr_epochs: float = 6.0,
        warmup_batches: float = 500.0,
        warmup_start: float = 0.5,
    ) -> None:
        if lr_batches <= 0 or lr_epochs <= 0:
            raise ValueError("Eden: lr_batches and lr_epochs must be > 0")
        if not 0.0 <= warmup_start <= 1.0:
            raise ValueError(f"Eden: warmup_start must be in [0, 1], got {warmup_start}")
        self.optimizer = optimizer
        self.lr_batches = float(lr_batches)
        self.lr_epochs = float(lr_epochs)
        self.warmup_batches = float(warmup_batches)
        self.warmup_start = float(warmup_start)
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.base_lrs = [group["base_lr"] for group in optimizer.param_groups]
        self.batch = 0
        self.epoch: float = 0
        self._set_lrs()

    def factor(self) -> float:
        """The lr multiplier at the current batch and epoch."""
        b, e = self.batch, self.epoch
        decay = ((b**2 + self.lr_batches**2) / self.lr_batches**2) ** -0.25
        decay *= ((e**2 + self.lr_epochs**2) / self.lr_epochs**2) ** -0.25
        if b >= self.warmup_batches:
            warmup = 1.0
        else:
            warmup = self.warmup_start + (1.0 - self.warmup_start) * b / self.warmup_batches
        return decay * warmup

    def get_lr(self) -> list[float]:
        """The lr of each param group at the current batch and epoch."""
        f = self.factor()
        return [base_lr * f for base_lr in self.base_lrs]

    def get_last_lr(self) -> list[float]:
        """The lrs last written into the optimizer's param groups."""
        return list(self._last_lr)

    def step_batch(self, batch: int | None = None) -> None:
        """Advance the batch count by one, or set it (``batch`` counts from the start of
        training, over all epochs)."""
        self.batch = self.batch + 1 if batch is None else batch
        self._set_lrs()

    def step_epoch(self, epoch: float | None = None) -> None:
        """Advance the epoch by one (call at an epoch's end), or set it (at its start; may be
        fractional)."""
        self.epoch = self.epoch + 1 if epoch is None else epoch
        self._set_lrs()

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "batch": self.batch, "epoch": self.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if len(state_dict["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError("Eden state dict has a different number of param groups")
        self.base_lrs = list(state_dict["base_lrs"])
        self.batch = state_dict["batch"]
        self.epoch = state_dict["epoch"]
        self._set_lrs()

    def _set_lrs(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> tuple[torch.optim.Optimizer, Eden]:
    """The optimizer named by ``cfg.name`` over ``model``'s trainable parameters, and its Eden
    schedule (``cfg.lr`` is the base lr).

    ``scaled_adam``: :class:`ScaledAdam` with named parameters (for clipping logs); it has no
    weight decay (``param_max_rms`` bounds parameter size), so ``cfg.weight_decay`` must be 0.
    ``adamw``: ``torch.optim.AdamW`` baseline (its usual lr is ~1e-3, not ScaledAdam's 0.045).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise AsrqError("build_optimizer: the model has no trainable parameters")
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    if cfg.name == "scaled_adam":
        if cfg.weight_decay != 0:
            raise AsrqError(
                "invalid config: train.optim.weight_decay must be 0 with scaled_adam "
                "(it has no weight decay; param_max_rms bounds parameter size)"
            )
        optimizer: torch.optim.Optimizer = ScaledAdam(
            named, lr=cfg.lr, betas=betas, clipping_scale=cfg.clipping_scale
        )
    elif cfg.name == "adamw":
        if cfg.lr > 0.01:
            log.warning(
                "AdamW with lr=%g: its usual lr is about 1e-3 (0.045 is ScaledAdam's)", cfg.lr
            )
        optimizer = torch.optim.AdamW(
            [p for _, p in named], lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay
        )
    else:
        raise AsrqError(
            f"invalid config: train.optim.name must be scaled_adam or adamw, got {cfg.name!r}"
        )
    scheduler = Eden(
        optimizer,
        lr_batches=cfg.lr_batches,
        lr_epochs=cfg.lr_epochs,
        warmup_batches=cfg.warmup_batches,
        warmup_start=cfg.warmup_start,
    )
    return optimizer, scheduler
