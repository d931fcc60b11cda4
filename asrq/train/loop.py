"""The RNN-T training loop: ScaledAdam + Eden, dynamic-chunk streaming training, pruned RNN-T
+ CTC losses, atomic checkpoints with exact resume, torchrun DDP, a WER curve over minutes.

Exact resume: the data order is a function of (seed, epoch) (lhotse's sampler, fast-forwarded
to the batch), SpecAugment and the chunk size are functions of (seed, step, rank), and the
torch/python/numpy RNG states (dropout) travel in the checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from asrq.config import (
    ExperimentConfig,
    LossConfig,
    ModelConfig,
    StreamingConfig,
    dump_yaml,
    from_dict,
    resolve_model_config,
    to_dict,
    upgrade_model_dict,
)
from asrq.models import build_model
from asrq.models.conformer import count_parameters
from asrq.models.transducer import pad_targets
from asrq.train.augment import spec_augment
from asrq.train.average import WeightAverage
from asrq.train.checkpoint import (
    load_checkpoint,
    model_payload,
    rng_state,
    save_checkpoint,
    sentencepiece_from_bytes,
    set_rng_state,
)
from asrq.train.distributed import (
    DistInfo,
    all_ranks_agree,
    barrier,
    cleanup_distributed,
    setup_distributed,
)
from asrq.utils.io import AsrqError, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    train_seconds: float = 0.0
    wer_curve: list[dict[str, float]] = field(default_factory=list)


def sample_chunk(cfg: StreamingConfig, seed: int, step: int) -> tuple[int, int]:
    """(chunk_size, left_chunks) for a step: streaming with prob ``dynamic_chunk_prob``
    (chunk uniform in [1, max_train_chunk]), else full context (-1, -1). Same on every rank."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    if float(torch.rand(1, generator=g)) < cfg.dynamic_chunk_prob:
        chunk = int(torch.randint(1, cfg.max_train_chunk + 1, (1,), generator=g))
        left = cfg.left_chunk_choices[
            int(torch.randint(len(cfg.left_chunk_choices), (1,), generator=g))
        ]
        return chunk, left
    return -1, -1


def loss_scales(step: int, cfg: LossConfig) -> tuple[float, float]:
    """icefall's warm-up: the simple loss dominates early, the pruned loss ramps up to 1."""
    if cfg.rnnt_type == "full" or step >= cfg.warm_steps:
        return cfg.simple_loss_scale, 1.0
    frac = step / max(1, cfg.warm_steps)
    return 1.0 - frac * (1.0 - cfg.simple_loss_scale), 0.1 + 0.9 * frac


def combine_losses(losses: dict[str, torch.Tensor], step: int, cfg: LossConfig) -> torch.Tensor:
    """``(1 - ctc_weight) * main + ctc_weight * ctc``; main is the RNN-T loss, or the attention
    decoder's (``att``) for the ctc_attention head."""
    if "att" in losses:  # asrq.models.ctc_attention
        return (1.0 - cfg.ctc_weight) * losses["att"] + cfg.ctc_weight * losses["ctc"]
    s, p = loss_scales(step, cfg)
    rnnt = (
        s * losses["simple"] + p * losses["pruned"]
        if cfg.rnnt_type == "pruned"
        else losses["pruned"]
    )
    return (1.0 - cfg.ctc_weight) * rnnt + cfg.ctc_weight * losses["ctc"]


def latest_checkpoint(exp_dir: Path) -> Path | None:
    ckpts = sorted(
        (exp_dir / "checkpoints").glob("ckpt-*.pt"), key=lambda p: int(p.stem.split("-")[1])
    )
    return ckpts[-1] if ckpts else None


def fast_forward(sampler: Any, epoch: int, num_batches: int) -> None:
    """Position a lhotse sampler at ``num_batches`` into ``epoch`` (what its own
    ``load_state_dict`` does; it then keeps this position on the next ``iter``)."""
    sampler.set_epoch(epoch)
    iter(sampler)
    for _ in range(num_batches):
        next(sampler)
    sampler._just_restored_state = True  # lhotse's documented hook for restored samplers


class Trainer:
    """Runs training for an :class:`ExperimentConfig`; ``run()`` returns a summary dict.

    Subclasses (asrq.supernet.train) override :meth:`train_step` and the hooks
    :meth:`_wrap_ddp` and :attr:`log_keys`."""

    #: per-step outputs of :meth:`train_step` averaged into the ``train`` log lines (besides
    #: ``loss``)
    log_keys: tuple[str, ...] = ("simple", "pruned", "ctc", "att")

    def __init__(
        self, cfg: ExperimentConfig, resume: str | Path | bool = False, progress: bool = True
    ) -> None:
        from asrq.data.bpe import Tokenizer

        self.dist: DistInfo = setup_distributed()
        self.progress = progress and self.dist.is_main
        self.exp_dir = Path(cfg.train.exp_dir)
        bpe_path = cfg.data.bpe_model
        if not bpe_path.is_file():
            raise AsrqError(f"{bpe_path}: BPE model not found (run `asrq data bpe` first)")
        self.bpe_bytes = bpe_path.read_bytes()
        self.tokenizer = Tokenizer(bpe_path)
        model_cfg = resolve_model_config(cfg.model, self.tokenizer.vocab_size, str(bpe_path))
        self.cfg = cfg = dataclasses.replace(cfg, model=model_cfg)
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.model)
        from asrq.train.optim import build_optimizer

        self.optimizer, self.scheduler = build_optimizer(self.model, cfg.train.optim)
        self.state = TrainState()
        if resume:
            self._resume(resume)
        else:
            from asrq.data.cmvn import feature_stats

            mean, std = feature_stats(self._train_cuts())
            self.model.encoder.embed.set_feature_stats(mean, std)
        self.average = self._make_average()
        if resume and self.average is not None:
            self.average.load_state_dict(self._resume_avg)
        self.ddp = self._wrap_ddp()

    def _wrap_ddp(self) -> DDP | None:
        """The DDP wrapper of ``self.model`` under torchrun, else None."""
        if not self.dist.enabled:
            return None
        unused = self.cfg.model.has_ctc and self.cfg.train.loss.ctc_weight == 0
        return DDP(self.model, find_unused_parameters=unused)

    # ---- checkpoints ------------------------------------------------------------------------
    def _make_average(self) -> WeightAverage | None:
        t = self.cfg.train
        return (
            WeightAverage(self.model, t.average_decay, t.average_every)
            if t.average_decay > 0
            else None
        )

    def _resume(self, resume: str | Path | bool) -> None:
        path = latest_checkpoint(self.exp_dir) if resume is True else Path(resume)
        if path is None:
            raise AsrqError(f"{self.exp_dir / 'checkpoints'}: no checkpoint to resume from")
        ckpt = load_checkpoint(path)
        stored = ckpt.get("config", {}).get("model")  # normalised: keys added later take defaults
        if stored is None or to_dict(
            from_dict(ModelConfig, upgrade_model_dict(stored), f"{path}:config", "model.")
        ) != to_dict(self.cfg.model):
            raise AsrqError(f"{path}: its model config differs from the current one; cannot resume")
        self.model.load_state_dict(ckpt["model"])
        self._resume_avg = ckpt.get("model_avg") or ckpt["model"]
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.state = TrainState(**ckpt["train_state"])
        set_rng_state(ckpt["rng"][self.dist.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])
        log.info("resumed from %s at step %d", path, self.state.step)

    def _gather_rng(self) -> Any:
        state = rng_state()
        if not self.dist.enabled:
            return state
        out: list[Any] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(out, state)
        return out

    def save(self) -> Path | None:
        rng = self._gather_rng()
        if not self.dist.is_main:
            return None
        ckpt_dir = self.exp_dir / "checkpoints"
        path = ckpt_dir / f"ckpt-{self.state.step}.pt"
        save_checkpoint(
            path,
            {
                "config": to_dict(self.cfg),
                "model": self.model.state_dict(),
                **({"model_avg": self.average.state_dict()} if self.average is not None else {}),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "train_state": asdict(self.state),
                "rng": rng,
                "bpe_model": self.bpe_bytes,
                "step": self.state.step,
                "epoch": self.state.epoch,
                "train_seconds": self.state.train_seconds,
            },
        )
        old = sorted(ckpt_dir.glob("ckpt-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
        for p in old[: max(0, len(old) - self.cfg.train.keep_last)]:
            p.unlink(missing_ok=True)
        return path

    def save_final(self) -> Path | None:
        if not self.dist.is_main:
            return None
        if self.average is not None:  # the deployable model holds the averaged weights
            with self.average.applied(self.model):
                return self._save_final()
        return self._save_final()

    def _save_final(self) -> Path:
        return save_checkpoint(
            self.exp_dir / "model.pt",
            model_payload(
                self.model,
                self.cfg,
                self.bpe_bytes,
                step=self.state.step,
                epoch=self.state.epoch,
                train_seconds=self.state.train_seconds,
                wer_curve=self.state.wer_curve,
            ),
        )

    # ---- evaluation (the WER curve) ---------------------------------------------------------
    def evaluate_dev(self) -> float | None:
        """Greedy full-context WER on up to ``eval_max_utts`` dev utterances (rank 0)."""
        wer = None
        if self.dist.is_main:
            from asrq.decode.evaluate import evaluate
            from asrq.train.checkpoint import LoadedModel

            cuts = (
                Path(self.cfg.data.fbank_dir)
                / f"librispeech_cuts_{self.cfg.data.dev_split}.jsonl.gz"
            )
            if cuts.is_file():
                self.model.eval()
                loaded = LoadedModel(
                    self.model,
                    self.cfg,
                    sentencepiece_from_bytes(self.bpe_bytes),
                    self.bpe_bytes,
                    {},
                )
                with (
                    self.average.applied(self.model)
                    if self.average is not None
                    else contextlib.nullcontext()
                ):
                    res = evaluate(
                        loaded,
                        cuts,
                        method="greedy",
                        streaming=False,
                        max_utts=self.cfg.train.eval_max_utts,
                        progress=False,
                    )
                self.model.train()
                wer = float(res.wer)
                ci = res.interval() if res.num_words > 0 else None  # 95% bootstrap interval
                point = {
                    "step": self.state.step,
                    "train_minutes": round(self.state.train_seconds / 60, 3),
                    "wer_dev": wer,
                    "wer_dev_lo": None if ci is None else round(ci["lo"], 2),
                    "wer_dev_hi": None if ci is None else round(ci["hi"], 2),
                }
                self.state.wer_curve.append(point)
                self._log_json({"event": "eval", **point})
        barrier(self.dist)
        return wer

    # ---- loop -------------------------------------------------------------------------------
    def _log_json(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        line = json.dumps(record)
        with open(self.exp_dir / "train_log.jsonl", "a") as f:
            f.write(line + "\n")
        tqdm.write(line)

    def _train_cuts(self) -> list[Path]:
        d = self.cfg.data
        return [Path(d.fbank_dir) / f"librispeech_cuts_{s}.jsonl.gz" for s in d.train_splits]

    def _make_loader(self):
        from asrq.data.loader import make_train_loader

        d = self.cfg.data
        loader = make_train_loader(
            self._train_cuts(),
            max_duration=d.max_duration,
            num_buckets=d.num_buckets,
            seed=self.cfg.train.seed,
            world_size=self.dist.world_size,
            rank=self.dist.rank,
            num_workers=d.num_workers,
            spec_augment=False,  # applied in-process, see asrq.train.augment
            augment=d.augment,  # waveform augmentation (asrq.data.augment); off by default
        )
        # worker seeds must not consume the global RNG (exact resume)
        loader.generator = torch.Generator().manual_seed(self.cfg.train.seed)
        return loader

    def _done(self) -> bool:
        t = self.cfg.train
        stop = (t.max_steps > 0 and self.state.step >= t.max_steps) or (
            t.max_minutes > 0 and self.state.train_seconds >= t.max_minutes * 60
        )
        return all_ranks_agree(stop, self.dist)

    def _inputs(
        self, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        """A batch's (SpecAugmented) features (N, T, F), lengths (N,), padded targets (N, S), target
        lengths (N,), and the step's chunk size and left chunks."""
        cfg, st = self.cfg, self.state
        feats, lens = batch["features"], batch["feature_lens"]
        if cfg.data.spec_augment:
            gen = torch.Generator().manual_seed(
                cfg.train.seed * 7919 + st.step * 31 + self.dist.rank
            )
            feats = spec_augment(feats, lens, gen)
        targets, target_lens = pad_targets(self.tokenizer.encode(batch["texts"]), pad=-1)
        chunk, left = sample_chunk(cfg.model.streaming, cfg.train.seed, st.step)
        return feats, lens, targets, target_lens, chunk, left

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        cfg, st = self.cfg, self.state
        feats, lens, targets, target_lens, chunk, left = self._inputs(batch)
        module = self.ddp if self.ddp is not None else self.model
        losses = module(feats, lens, targets, target_lens, cfg.train.loss, chunk, left)
        frames = max(1.0, float(losses["frames"]))
        loss = combine_losses(losses, st.step, cfg.train.loss)
        self.optimizer.zero_grad(set_to_none=True)
        (loss / frames).backward()
        self.optimizer.step()
        st.step += 1
        if self.average is not None:
            self.average.update(self.model, st.step)
        self.scheduler.step_batch(st.step)
        return {
            "loss": float(loss.detach()) / frames,
            **{
                k: float(v.detach()) / frames for k, v in losses.items() if k != "frames"
            },  # simple, pruned, ctc | ctc, att
            "utts": len(batch["texts"]),
            "audio_s": float(lens.sum()) / 100.0,
            "chunk": chunk,
        }

    def run(self) -> dict[str, Any]:
        cfg, st = self.cfg, self.state
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            atomic_write_text(self.exp_dir / "config.yaml", dump_yaml(cfg))
        params = count_parameters(self.model)
        self._log_json(
            {
                "event": "start",
                "params": params,
                "step": st.step,
                "world_size": self.dist.world_size,
            }
        )
        loader = self._make_loader()
        self.model.train()
        eval_every = cfg.train.eval_every_minutes * 60
        next_eval = (
            (math.floor(st.train_seconds / eval_every) + 1) * eval_every
            if eval_every > 0
            else math.inf
        )
        total = cfg.train.max_steps or None
        bar = tqdm(
            total=total,
            initial=st.step,
            disable=not self.progress,
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )
        acc: dict[str, float] = {}
        stop = self._done()
        while not stop and st.epoch < cfg.train.max_epochs:
            if st.batch_in_epoch > 0:
                fast_forward(loader.sampler, st.epoch, st.batch_in_epoch)
            else:
                loader.sampler.set_epoch(st.epoch)
            t0 = time.perf_counter()
            for batch in loader:
                out = self.train_step(batch)
                st.batch_in_epoch += 1
                now = time.perf_counter()
                st.train_seconds += now - t0
                for k in out:
                    if k != "chunk":
                        acc[k] = acc.get(k, 0.0) + out[k]
                        acc["#" + k] = (
                            acc.get("#" + k, 0) + 1
                        )  # keys some steps lack average over their own steps
                acc["n"] = acc.get("n", 0) + 1
                acc["sec"] = acc.get("sec", 0.0) + (now - t0)
                if not math.isfinite(out["loss"]):
                    log.warning("non-finite loss at step %d", st.step)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{out['loss']:.3f}",
                    lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                    utt_s=f"{acc['utts'] / acc['sec']:.1f}",
                )
                if st.step % cfg.train.log_every == 0:
                    n = acc["n"]
                    self._log_json(
                        {
                            "event": "train",
                            "step": st.step,
                            "epoch": st.epoch,
                            "loss": round(acc["loss"] / n, 5),
                            **{
                                k: round(acc[k] / acc["#" + k], 5)
                                for k in self.log_keys
                                if k in acc
                            },
                            "lr": self.scheduler.get_last_lr()[0],
                            "utts_per_s": round(acc["utts"] / acc["sec"], 2),
                            "audio_s_per_s": round(
                                acc["audio_s"] / acc["sec"] * self.dist.world_size, 1
                            ),
                            "train_minutes": round(st.train_seconds / 60, 3),
                        }
                    )
                    acc = {}
                if cfg.train.save_every > 0 and st.step % cfg.train.save_every == 0:
                    self.save()
                if st.train_seconds >= next_eval:
                    self.evaluate_dev()
                    next_eval += eval_every
                stop = self._done()
                if stop:
                    break
                t0 = time.perf_counter()
            else:
                st.epoch += 1
                st.batch_in_epoch = 0
                self.scheduler.step_epoch(st.epoch)
        bar.close()
        if eval_every < math.inf and (not st.wer_curve or st.wer_curve[-1]["step"] != st.step):
            self.evaluate_dev()
        self.save()
        final = self.save_final()
        summary = {
            "params": params,
            "steps": st.step,
            "epochs_completed": st.epoch,
            "train_minutes": round(st.train_seconds / 60, 3),
            "wer_curve": st.wer_curve,
            "model": str(final) if final else None,
        }
        if self.dist.is_main:
            atomic_write_json(self.exp_dir / "train_summary.json", summary)
        cleanup_distributed(self.dist)
        return summary


def train(
    cfg: ExperimentConfig, resume: str | Path | bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train the model ``cfg`` describes; returns the summary (also in
    ``exp_dir/train_summary.json``)."""
    return Trainer(cfg, resume=resume, progress=progress).run()
