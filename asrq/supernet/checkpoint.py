"""Supernet checkpoints in, plain subnet checkpoints out (``asrq slice``).

A supernet checkpoint is an ordinary asrq checkpoint (training ``ckpt-N.pt`` or final
``model.pt``) whose config has a ``supernet:`` section. :func:`slice_checkpoint` cuts one subnet
out with :func:`asrq.supernet.elastic.slice_model` and writes it as an ordinary deployable
``model.pt`` (:func:`asrq.train.checkpoint.model_payload`, atomic): its config is the subnet's
plain :class:`~asrq.config.ModelConfig` with ``supernet: null``, so ``asrq decode``, ``export``,
``transcribe`` and ``bench`` take it unchanged. The payload also records ``subnet`` (the spec's
label, e.g. ``L4-d96-f288-h4-j128-p128``: :func:`asrq.train.checkpoint.load_model` reads it into
``LoadedModel.subnet``, and export metadata and benchmark JSON name it), ``subnet_spec`` (the
spec's fields) and ``sliced_from``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from asrq.config import ExperimentConfig, stored_experiment_config
from asrq.models import build_model
from asrq.supernet.elastic import Supernet, slice_model
from asrq.supernet.spec import SearchSpace, SubnetSpec, load_spec
from asrq.supernet.train import adaptive_dropout
from asrq.train.checkpoint import load_checkpoint, model_payload, save_checkpoint
from asrq.utils.io import AsrqError, atomic_write_text


@dataclass
class LoadedSupernet:
    model: torch.nn.Module  # the plain model of the largest config (eval mode)
    config: ExperimentConfig
    space: SearchSpace
    bpe_model_bytes: bytes
    meta: dict


def load_supernet(path: str | Path) -> LoadedSupernet:
    """Rebuild a supernet (eval mode; ``model_avg`` weights when present) and its search space."""
    ckpt = load_checkpoint(path)
    cfg = stored_experiment_config(ckpt["config"], f"{path}:config")
    if cfg.supernet is None:
        raise AsrqError(f"{path}: not a supernet checkpoint (its config has no supernet: section)")
    space = SearchSpace(cfg.supernet.search_space, cfg.model, where=f"{path}:supernet.search_space")
    model = build_model(cfg.model)
    if cfg.qat is not None:  # a QAT supernet: fake-quantized, its step sizes load below
        from asrq.quant.modules import quantize_

        quantize_(model, cfg.qat.quant, init_scales=False)
    try:
        model.load_state_dict(ckpt.get("model_avg") or ckpt["model"])
    except RuntimeError as e:
        raise AsrqError(f"{path}: weights do not match the stored config ({e})") from e
    bpe = ckpt.get("bpe_model")
    if not bpe:
        raise AsrqError(f"{path}: checkpoint holds no BPE model")
    meta = {k: ckpt[k] for k in ("step", "epoch", "train_seconds") if k in ckpt}
    return LoadedSupernet(model.eval(), cfg, space, bpe, meta)


@dataclass
class SliceResult:
    path: Path  # the written model.pt
    spec: SubnetSpec  # resolved
    params: int
    supernet_params: int
    config: ExperimentConfig


def slice_checkpoint(
    path: str | Path, spec: str | Path | SubnetSpec, out_dir: str | Path
) -> SliceResult:
    """Cut subnet ``spec`` (``largest``, ``smallest``, a spec YAML file or a :class:`SubnetSpec`)
    out of the supernet checkpoint ``path``; writes ``out_dir/model.pt`` and ``out_dir/spec.yaml``.
    The spec is validated against the supernet's search space before anything is written. The
    subnet's config keeps the encoder dropout it trained with (adaptive dropout)."""
    sup = load_supernet(path)
    if isinstance(spec, SubnetSpec):
        resolved = sup.space.validate(spec)
    else:
        resolved = load_spec(spec, sup.space)
    quant = sup.config.qat.quant if sup.config.qat is not None else None
    sn = Supernet(sup.model, sup.config.model, quant=quant)
    largest = sn.num_params(sup.space.largest())
    dropout = adaptive_dropout(
        sup.config.supernet, sn.num_params(resolved), largest, sup.config.model.encoder.dropout
    )
    plain, model_cfg = slice_model(
        sup.model, sup.config.model, resolved, dropout=dropout, quant=quant
    )
    cfg = copy.deepcopy(sup.config)
    cfg.model = model_cfg
    cfg.supernet = None
    out = Path(out_dir) / "model.pt"
    payload = model_payload(
        plain,
        cfg,
        sup.bpe_model_bytes,
        **sup.meta,
        subnet=resolved.short(),
        subnet_spec=resolved.to_dict(),
        sliced_from=str(path),
    )
    save_checkpoint(out, payload)
    atomic_write_text(Path(out_dir) / "spec.yaml", resolved.dump_yaml())
    params = sum(p.numel() for p in plain.parameters())
    return SliceResult(out, resolved, params, sum(p.numel() for p in sup.model.parameters()), cfg)
