"""One config system: nested dataclasses, validated in ``__post_init__``, loaded from YAML
with dotted overrides (``train.optim.lr=0.03``), and stored resolved in every checkpoint and
exported file (STYLE.md points 3 and 4).

Families:
    ModelConfig (EncoderConfig, StreamingConfig, one section per head: RnntConfig with
        PredictorConfig, CtcAttentionConfig with AttentionDecoderConfig; HEAD_METHODS)
    DataConfig (SynthConfig)
    TrainConfig (OptimConfig, LossConfig)
    DecodeConfig, ExportConfig, BenchConfig
    SupernetConfig (SearchSpaceConfig): optional, for supernet training
    ExperimentConfig: all of the above, what a recipe YAML holds.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from asrq.config.checks import _check
from asrq.config.data import AugmentConfig, DataConfig, SynthConfig
from asrq.config.deploy import BenchConfig, DecodeConfig, ExportConfig
from asrq.config.model import (
    HEAD_METHODS,
    AttentionDecoderConfig,
    CtcAttentionConfig,
    EncoderConfig,
    ModelConfig,
    PredictorConfig,
    RnntConfig,
    StreamingConfig,
    resolve_model_config,
    upgrade_config_dict,
    upgrade_model_dict,
)
from asrq.config.supernet import SearchSpaceConfig, SupernetConfig
from asrq.config.train import LossConfig, OptimConfig, TrainConfig
from asrq.quant.config import QatConfig
from asrq.utils.io import AsrqError

__all__ = [
    "HEAD_METHODS",
    "AttentionDecoderConfig",
    "AugmentConfig",
    "BenchConfig",
    "CtcAttentionConfig",
    "DataConfig",
    "DecodeConfig",
    "EncoderConfig",
    "ExperimentConfig",
    "ExportConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PredictorConfig",
    "QatConfig",
    "RnntConfig",
    "SearchSpaceConfig",
    "StreamingConfig",
    "SupernetConfig",
    "SynthConfig",
    "TrainConfig",
    "apply_overrides",
    "dump_yaml",
    "from_dict",
    "load_config",
    "resolve_model_config",
    "stored_experiment_config",
    "to_dict",
    "upgrade_config_dict",
    "upgrade_model_dict",
]

T = TypeVar("T")


@dataclass
class ExperimentConfig:
    """What a recipe YAML holds. ``supernet`` is None for an ordinary model (and for a subnet
    sliced out of a supernet by ``asrq slice``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    supernet: SupernetConfig | None = None
    #: quantization-aware fine-tuning (``asrq qat train``; asrq.quant): None for fp32 models
    qat: QatConfig | None = None

    def __post_init__(self) -> None:
        methods = HEAD_METHODS[self.model.head]
        _check(
            self.decode.method in methods,
            f"decode.method {self.decode.method!r} is not for model.head {self.model.head!r}; "
            f"choose one of {list(methods)}",
        )


# --------------------------------------------------------------------------------------------
# (de)serialisation
# --------------------------------------------------------------------------------------------
def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(
    cls: type[T], data: dict[str, Any] | None, where: str = "config", prefix: str = ""
) -> T:
    """Build dataclass ``cls`` from a (possibly partial) nested dict; unknown keys are errors.

    ``where`` names the source (a file) and ``prefix`` the dotted path of ``data`` in it
    (``model.rnnt``); errors name both, e.g. ``cfg.yaml: unknown key model.rnnt.joinr_dim``."""
    data = data or {}
    if not isinstance(data, dict):
        raise AsrqError(f"{where}: {prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        keys = ", ".join(f"{prefix}{k}" for k in unknown)
        section = f" in {prefix.rstrip('.')}" if prefix else ""
        raise AsrqError(f"{where}: unknown key {keys}; known{section}: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, where, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, f"{key}.")
    if origin is Literal:
        if value not in get_args(tp):
            raise AsrqError(f"{where}: {key}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where, key)
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list | tuple):
            raise AsrqError(f"{where}: {key}: expected a list, got {value!r}")
        return [_coerce(item_tp, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and not isinstance(value, tp):
        raise AsrqError(f"{where}: {key}: expected {tp.__name__}, got {value!r}")
    return value


def stored_experiment_config(data: dict[str, Any], where: str) -> ExperimentConfig:
    """The :class:`ExperimentConfig` a checkpoint or export stored as a dict (older flat model
    layouts upgraded: :func:`upgrade_config_dict`)."""
    if not isinstance(data, dict):
        raise AsrqError(f"{where}: the stored config is not a mapping")
    return from_dict(ExperimentConfig, upgrade_config_dict(data), where)


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict in place."""
    for item in overrides:
        if "=" not in item:
            raise AsrqError(f"override {item!r}: expected KEY=VALUE, e.g. train.optim.lr=0.03")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise AsrqError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    cls: type[T] = ExperimentConfig,
) -> T:
    """Load a YAML config (or the defaults when ``path`` is None) with dotted overrides."""
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise AsrqError(f"{p}: config file not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise AsrqError(f"{p}: not valid YAML ({e})") from e
    apply_overrides(data, list(overrides))
    return from_dict(cls, data, where)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
