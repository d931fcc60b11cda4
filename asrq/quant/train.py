"""QAT fine-tuning of an fp32 checkpoint (``asrq qat train``).

:class:`QatTrainer` is the ordinary :class:`asrq.train.loop.Trainer` (same data, losses, EMA,
checkpoints, exact resume) with three changes, made through its hooks:

- the model: after the Trainer has built the fp32 model, it takes the weights of
  ``qat.init``, is made fake-quantized with :func:`asrq.quant.quantize_` (``qat.quant``) and the
  activation quantizers are calibrated on ``qat.calib_batches`` training batches (done in
  :meth:`QatTrainer._wrap_ddp`, the last hook of ``Trainer.__init__``); on resume the model is
  quantized first and the checkpoint's step sizes load with the weights (:meth:`_resume`);
- the optimizer: one optimizer (``train.optim``) with two parameter groups, the network and
  the quantizer parameters (lr x ``qat.scale_lr_scale``), under the Eden schedule;
- the step: :func:`asrq.quant.set_qat_step` before each step (the noise estimator's schedule);
  with ``estimator: squat`` the step is :func:`asrq.quant.squat.squat_step`.

The resolved config, ``qat:`` section included (``ExperimentConfig.qat``), travels in every
checkpoint; :func:`load_qat_model` rebuilds the fake-quantized model from one. Checkpoints hold
only tensors and plain data.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asrq.config import ExperimentConfig, ModelConfig, OptimConfig, from_dict, to_dict
from asrq.quant.config import QatConfig
from asrq.quant.fake_quant import noise_amplitude, set_qat_step
from asrq.quant.modules import calibrating, quantize_, quantized_layers, split_parameters
from asrq.quant.squat import squat_step
from asrq.train.checkpoint import LoadedModel, load_checkpoint, sentencepiece_from_bytes
from asrq.train.loop import Trainer, combine_losses
from asrq.utils.io import AsrqError


def build_qat_optimizer(model: nn.Module, cfg: OptimConfig, scale_lr_scale: float):
    """``train.optim``'s optimizer over two groups, network parameters and quantizer parameters
    (lr x ``scale_lr_scale``), with its Eden schedule."""
    from asrq.train.optim import Eden, ScaledAdam

    net, q = split_parameters(model)
    if not q:
        raise AsrqError("qat: the model has no quantizer parameters (was quantize_ applied?)")
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    if cfg.name == "scaled_adam":
        if cfg.weight_decay != 0:
            raise AsrqError("invalid config: train.optim.weight_decay must be 0 with scaled_adam")
        opt: torch.optim.Optimizer = ScaledAdam(
            [{"params": net}, {"params": q, "lr": cfg.lr * scale_lr_scale}],
            lr=cfg.lr,
            betas=betas,
            clipping_scale=cfg.clipping_scale,
        )
    else:
        opt = torch.optim.AdamW(
            [
                {"params": [p for _, p in net]},
                {"params": [p for _, p in q], "lr": cfg.lr * scale_lr_scale, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            betas=betas,
            weight_decay=cfg.weight_decay,
        )
    sched = Eden(
        opt,
        lr_batches=cfg.lr_batches,
        lr_epochs=cfg.lr_epochs,
        warmup_batches=cfg.warmup_batches,
        warmup_start=cfg.warmup_start,
    )
    return opt, sched


def _init_weights(
    path: str | Path, cfg: ModelConfig, supernet: bool = False
) -> dict[str, torch.Tensor]:
    """The (averaged) weights of fp32 checkpoint ``path``, checked against ``cfg``."""
    ckpt = load_checkpoint(path)
    stored = ckpt.get("config", {})
    if (stored.get("supernet") is not None) != supernet:
        kind = "a supernet" if supernet else "not a supernet"
        raise AsrqError(
            f"{path}: the QAT config {'has' if supernet else 'has no'} supernet: section but the "
            f"checkpoint is {'not ' if supernet else ''}a supernet checkpoint ({kind} run needs "
            "the recipe the checkpoint was trained with)"
        )
    if stored.get("qat") is not None:
        raise AsrqError(f"{path}: already a QAT checkpoint; resume it with --resume instead")
    model_cfg = stored.get("model")
    if model_cfg is None or to_dict(from_dict(ModelConfig, model_cfg)) != to_dict(cfg):
        raise AsrqError(
            f"{path}: its model config differs from the QAT config's model section; use the "
            "recipe config the checkpoint was trained with"
        )
    return ckpt.get("model_avg") or ckpt["model"]


class QatTrainer(Trainer):
    """QAT fine-tuning run for a :class:`ExperimentConfig` (module doc)."""

    log_keys = (*Trainer.log_keys, "noise_amp")

    def __init__(
        self, cfg: ExperimentConfig, resume: str | Path | bool = False, progress: bool = True
    ) -> None:
        if cfg.qat is None:
            cfg = dataclasses.replace(cfg, qat=QatConfig())
        if cfg.supernet is not None and type(self) is QatTrainer:
            raise AsrqError("qat: a supernet config trains with SupernetQatTrainer (qat_train)")
        if cfg.supernet is not None and cfg.qat.quant.estimator == "squat":
            raise AsrqError(
                "qat: estimator squat alternates SAM steps of one network; the supernet's "
                "sandwich steps are not supported with it (use ste or noise)"
            )
        if not resume and not cfg.qat.init:
            raise AsrqError("qat: no fp32 checkpoint to start from (set qat.init or --init)")
        self.qat = cfg.qat
        self._quantized = False
        super().__init__(cfg, resume=resume, progress=progress)

    # ---- hooks of Trainer -------------------------------------------------------------------
    def _quantize(self) -> None:
        quantize_(self.model, self.qat.quant)
        self.optimizer, self.scheduler = build_qat_optimizer(
            self.model, self.cfg.train.optim, self.qat.scale_lr_scale
        )
        self._quantized = True

    def _resume(self, resume: str | Path | bool) -> None:
        self._quantize()
        super()._resume(resume)

    def _wrap_ddp(self):
        if not self._quantized:  # a fresh run: fp32 weights, quantize, calibrate
            init = Path(self.qat.init)
            self.model.load_state_dict(
                _init_weights(init, self.cfg.model, self.cfg.supernet is not None)
            )
            self._quantize()
            self.calibrate()
            self.average = self._make_average()
            self.exp_dir.mkdir(parents=True, exist_ok=True)
            self._log_json(
                {
                    "event": "qat_init",
                    "init": str(init),
                    "quantized_layers": len(quantized_layers(self.model)),
                    "estimator": self.qat.quant.estimator,
                }
            )
        return super()._wrap_ddp()

    @torch.no_grad()
    def calibrate(self) -> int:
        """Activation ranges from ``qat.calib_batches`` training batches (full context)."""
        loader = self._make_loader()
        loader.sampler.set_epoch(0)
        self.model.eval()
        n = 0
        with calibrating(self.model):
            for batch in loader:
                feats, lens, targets, target_lens, _, _ = self._inputs(batch)
                self.model(feats, lens, targets, target_lens, self.cfg.train.loss, -1, -1)
                n += 1
                if n >= self.qat.calib_batches:
                    break
        self.model.train()
        return n

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        st = self.state
        set_qat_step(self.model, st.step)
        q = self.qat.quant
        extra = {}
        if q.estimator == "noise":
            extra["noise_amp"] = noise_amplitude(st.step, q.noise_init, q.noise_decay_steps)
        if q.estimator != "squat":
            return {**super().train_step(batch), **extra}
        return self._squat_step(batch)

    def _squat_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Trainer.train_step with the optimizer step replaced by SQuAT's alternation."""
        cfg, st = self.cfg, self.state
        feats, lens, targets, target_lens, chunk, left = self._inputs(batch)
        module = self.ddp if self.ddp is not None else self.model
        out: dict[str, Any] = {}

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            losses = module(feats, lens, targets, target_lens, cfg.train.loss, chunk, left)
            frames = max(1.0, float(losses["frames"]))
            loss = combine_losses(losses, st.step, cfg.train.loss)
            (loss / frames).backward()
            if not out:  # the first pass: the loss at the unperturbed weights
                out.update(
                    {k: float(v.detach()) / frames for k, v in losses.items() if k != "frames"}
                )
                out["loss"] = float(loss.detach()) / frames
            return loss

        net, qp = split_parameters(self.model)
        squat_step(
            self.optimizer,
            [p for _, p in net],
            [p for _, p in qp],
            closure,
            st.step,
            self.qat.quant.squat_rho,
        )
        st.step += 1
        if self.average is not None:
            self.average.update(self.model, st.step)
        self.scheduler.step_batch(st.step)
        return {
            **out,
            "utts": len(batch["texts"]),
            "audio_s": float(lens.sum()) / 100.0,
            "chunk": chunk,
        }


def supernet_qat_trainer() -> type:
    """The QAT trainer of a supernet: :class:`QatTrainer`'s hooks (quantize, calibrate, the
    noise schedule) over :class:`asrq.supernet.train.SupernetTrainer`'s sandwich steps, every
    sampled subnet fake-quantized with its sliced step sizes (asrq.supernet.elastic)."""
    from asrq.supernet.train import SupernetTrainer

    class SupernetQatTrainer(QatTrainer, SupernetTrainer):
        log_keys = tuple(dict.fromkeys((*SupernetTrainer.log_keys, "noise_amp")))

    return SupernetQatTrainer


def qat_train(
    cfg: ExperimentConfig, resume: str | Path | bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run QAT fine-tuning (of a supernet when ``cfg`` has a ``supernet:`` section, with its
    sandwich rule); returns the training summary (``exp_dir/train_summary.json``)."""
    cls = supernet_qat_trainer() if cfg.supernet is not None else QatTrainer
    return cls(cfg, resume=resume, progress=progress).run()


def load_qat_model(path: str | Path) -> LoadedModel:
    """Rebuild the fake-quantized model (eval mode) of a QAT checkpoint with its learned step
    sizes (``model_avg`` weights when present, as :func:`asrq.train.checkpoint.load_model`)."""
    from asrq.models import build_model

    ckpt = load_checkpoint(path)
    if ckpt.get("config", {}).get("qat") is None:
        raise AsrqError(f"{path}: not a QAT checkpoint (its config has no qat: section)")
    cfg = from_dict(ExperimentConfig, ckpt["config"], where=f"{path}:config")
    model = build_model(cfg.model)
    quantize_(model, cfg.qat.quant, init_scales=False)
    state = ckpt.get("model_avg") or ckpt["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise AsrqError(f"{path}: weights do not match the stored config ({e})") from e
    model.eval()
    bpe = ckpt.get("bpe_model")
    if not bpe:
        raise AsrqError(f"{path}: checkpoint holds no BPE model")
    meta = {k: v for k, v in ckpt.items() if k in ("step", "epoch", "train_seconds", "wer_curve")}
    return LoadedModel(model, cfg, sentencepiece_from_bytes(bpe), bpe, meta)
