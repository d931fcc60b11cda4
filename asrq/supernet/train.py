"""Supernet training (TODM, Shangguan et al., arXiv 2309.01947): the sandwich rule with in-place
distillation, on top of :class:`asrq.train.loop.Trainer` (data, ScaledAdam + Eden, dynamic
chunks, checkpoints and exact resume, DDP, the WER curve are all the normal trainer's).

One step (:meth:`SupernetTrainer.train_step`), on one batch with one SpecAugment draw and one
chunk size:

1. specs = ``[largest, smallest, num_random random]`` (:meth:`SearchSpace.sandwich`, a function
   of (seed, step) only: every rank and every resume trains the same subnets); during the first
   ``supernet.warmup_steps`` steps only ``[largest]`` (OFA's "train the full network first").
   The random subnets come from ``supernet.sample_pool`` when it lists specs (e.g. the sizes
   to deploy), else from the whole search space;
2. the largest subnet (the whole supernet) runs first on its task loss (pruned RNN-T + CTC,
   :func:`asrq.train.loop.combine_losses`); its outputs, detached, are the teacher;
3. every other subnet runs inside the supernet (:meth:`Supernet.active`) on the teacher's
   pruning ranges, with loss ``task + w * (kd_ctc + kd_rnnt)``, ``w`` = :func:`kd_weight_at`
   (0 before ``kd_start_step``, then a ramp to ``kd_weight``)
   (:func:`asrq.supernet.distill.distillation_loss`);
4. each subnet's loss (divided by the batch's frames, as the normal trainer) is backpropagated
   at once, so its graph is freed and the gradients of all subnets accumulate in the shared
   weights; then one optimizer step. Under torchrun the accumulated gradients are averaged
   over ranks with one all-reduce (what DDP would do; DDP's hooks expect one forward per
   backward, the sandwich runs several).

Adaptive dropout (:func:`adaptive_dropout`): each subnet's encoder dropout scales with its size.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from asrq.config import ExperimentConfig, SupernetConfig, from_dict, to_dict
from asrq.supernet.distill import distillation_loss, transducer_outputs
from asrq.supernet.elastic import Supernet
from asrq.supernet.spec import SearchSpace, SubnetSpec
from asrq.train.checkpoint import load_checkpoint
from asrq.train.loop import Trainer, combine_losses, latest_checkpoint
from asrq.utils.io import AsrqError

log = logging.getLogger(__name__)


def adaptive_dropout(cfg: SupernetConfig, params: int, largest_params: int, base: float) -> float:
    """Encoder dropout of a subnet with ``params`` parameters: ``dropout_min + (dropout_max -
    dropout_min) * (params / largest_params) ** dropout_power`` (``dropout_max`` None: ``base``,
    the model's dropout); ``base`` for every subnet when ``adaptive_dropout`` is off."""
    if not cfg.adaptive_dropout:
        return base
    hi = base if cfg.dropout_max is None else cfg.dropout_max
    return cfg.dropout_min + (hi - cfg.dropout_min) * (params / largest_params) ** cfg.dropout_power


def kd_weight_at(cfg: SupernetConfig, step: int) -> float:
    """The distillation weight at ``step``: 0 before ``kd_start_step``, then a linear ramp to
    ``kd_weight`` over ``kd_ramp_steps`` steps."""
    if step < cfg.kd_start_step:
        return 0.0
    if cfg.kd_ramp_steps <= 0:
        return cfg.kd_weight
    return cfg.kd_weight * min(1.0, (step - cfg.kd_start_step + 1) / cfg.kd_ramp_steps)


def resolve_supernet_config(cfg: ExperimentConfig) -> SearchSpace:
    """Validate ``cfg.supernet`` against ``cfg.model`` and write the resolved values back (every
    search-space dimension explicit, ``dropout_max`` filled), so checkpoints hold them."""
    if cfg.supernet is None:
        raise AsrqError("this config has no supernet: section (see asrq.config.SupernetConfig)")
    sn = cfg.supernet
    space = SearchSpace(sn.search_space, cfg.model)
    sn.search_space = space.config()
    if sn.dropout_max is None:
        sn.dropout_max = cfg.model.encoder.dropout
    if sn.kd_weight > 0 and sn.kd_on in ("ctc", "both") and not cfg.model.has_ctc:
        raise AsrqError(
            f"invalid config: supernet.kd_on {sn.kd_on} needs model.rnnt.ctc_head: true "
            "(or use kd_on: rnnt)"
        )
    if sn.kd_weight > 0 and sn.kd_on in ("ctc", "both") and cfg.train.loss.ctc_weight == 0:
        log.warning(
            "supernet.kd_on %s with train.loss.ctc_weight 0: the teacher's CTC head is untrained",
            sn.kd_on,
        )
    return space


class SupernetTrainer(Trainer):
    """Trains a supernet for an :class:`ExperimentConfig` with a ``supernet:`` section (module
    doc)."""

    log_keys = (*Trainer.log_keys, "kd_ctc", "kd_rnnt", "kd_weight", "loss_smallest", "loss_random")

    def __init__(
        self, cfg: ExperimentConfig, resume: str | Path | bool = False, progress: bool = True
    ) -> None:
        self.space = resolve_supernet_config(cfg)
        self.pool = self.space.pool(
            cfg.supernet.sample_pool
        )  # errors name supernet.sample_pool[i], before any work
        super().__init__(cfg, resume=resume, progress=progress)
        # a QAT run (asrq.quant.train) has made self.model fake-quantized by now
        quant = self.cfg.qat.quant if self.cfg.qat is not None else None
        self.supernet = Supernet(self.model, self.cfg.model, quant=quant)
        self.largest_params = self.supernet.num_params(self.space.largest())

    # ---- hooks of Trainer -------------------------------------------------------------------
    def _wrap_ddp(self) -> None:
        """No DDP wrapper (see the module doc); rank 0's initial weights are broadcast instead."""
        if self.dist.enabled:
            with torch.no_grad():
                for t in [*self.model.parameters(), *self.model.buffers()]:
                    dist.broadcast(t, src=0)
        return None

    def _resume(self, resume: str | Path | bool) -> None:
        """The normal trainer's resume, which also refuses a checkpoint with another search space
        (the other supernet settings, like the train settings, may change on resume)."""
        path = latest_checkpoint(self.exp_dir) if resume is True else Path(resume)
        if path is not None:
            stored = load_checkpoint(path).get("config", {}).get("supernet")
            if stored is None:
                raise AsrqError(
                    f"{path}: not a supernet checkpoint (no supernet: section); cannot resume a "
                    "supernet from it"
                )
            if to_dict(from_dict(SupernetConfig, stored).search_space) != to_dict(
                self.cfg.supernet.search_space
            ):
                raise AsrqError(
                    f"{path}: its supernet search space differs from the current one; cannot resume"
                )
        super()._resume(resume)

    def run(self) -> dict[str, Any]:
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        big, small = self.space.largest(), self.space.smallest()
        self._log_json(
            {
                "event": "supernet",
                "search_space": to_dict(self.space.config()),
                "num_subnets": self.space.size(),
                "largest": big.short(),
                "largest_params": self.largest_params,
                "smallest": small.short(),
                "smallest_params": self.supernet.num_params(small),
            }
        )
        return super().run()

    # ---- one step ---------------------------------------------------------------------------
    def dropout_for(self, spec: SubnetSpec) -> float:
        return adaptive_dropout(
            self.cfg.supernet,
            self.supernet.num_params(spec),
            self.largest_params,
            self.cfg.model.encoder.dropout,
        )

    def _all_reduce_grads(self) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.dist.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        cfg, st, sn = self.cfg, self.state, self.cfg.supernet
        feats, lens, targets, target_lens, chunk, left = self._inputs(batch)
        if st.step < sn.warmup_steps:  # warm-up: the largest subnet alone
            specs = [self.space.largest()]
        else:
            specs = self.space.sandwich(cfg.train.seed, st.step, sn.num_random, self.pool)
        kd_weight = kd_weight_at(sn, st.step)
        kd_ctc = sn.kd_weight > 0 and sn.kd_on in ("ctc", "both")
        self.optimizer.zero_grad(set_to_none=True)
        teacher = None
        out: dict[str, float] = {"kd_ctc": 0.0, "kd_rnnt": 0.0, "loss_random": 0.0}
        for i, spec in enumerate(specs):
            with self.supernet.active(spec, self.dropout_for(spec)) as model:
                res = transducer_outputs(
                    model,
                    feats,
                    lens,
                    targets,
                    target_lens,
                    cfg.train.loss,
                    chunk,
                    left,
                    ranges=None if teacher is None else teacher.lattice_s,
                    need_ctc=kd_ctc,
                )
            frames = max(1.0, float(res.losses["frames"]))
            task = combine_losses(res.losses, st.step, cfg.train.loss)
            loss = task
            if teacher is None:
                teacher = res.detached()
                out.update(
                    {
                        "loss": float(task.detach()) / frames,
                        **{
                            k: float(v.detach()) / frames
                            for k, v in res.losses.items()
                            if k != "frames"
                        },
                    }
                )
            else:
                if kd_weight > 0:
                    kd = distillation_loss(teacher, res, sn)
                    loss = task + kd_weight * sum(kd.values())
                    for k, v in kd.items():
                        out[k] += float(v.detach()) / frames / (len(specs) - 1)
                if i == 1:
                    out["loss_smallest"] = float(task.detach()) / frames
                else:
                    out["loss_random"] += float(task.detach()) / frames / max(1, len(specs) - 2)
            (loss / frames).backward()
        if self.dist.enabled:
            self._all_reduce_grads()
        self.optimizer.step()
        st.step += 1
        self.scheduler.step_batch(st.step)
        if self.average is not None:  # the EMA of the supernet's weights (asrq.train.average)
            self.average.update(self.model, st.step)
        if len(specs) < 3:
            del out["loss_random"]
        if len(specs) == 1:
            del out["kd_ctc"], out["kd_rnnt"]
        else:
            out["kd_weight"] = kd_weight
        return {
            **out,
            "utts": len(batch["texts"]),
            "audio_s": float(lens.sum()) / 100.0,
            "chunk": chunk,
        }


def train_supernet(
    cfg: ExperimentConfig, resume: str | Path | bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train the supernet ``cfg`` describes; returns the summary (also in
    ``exp_dir/train_summary.json``). The final ``exp_dir/model.pt`` is the supernet (decoding it
    decodes the largest subnet); cut subnets out with ``asrq slice``."""
    return SupernetTrainer(cfg, resume=resume, progress=progress).run()
