"""Subnet specs and the search space of a supernet (TODM, Shangguan et al., arXiv 2309.01947).

A :class:`SubnetSpec` names one subnetwork of a supernet: the encoder's first ``num_layers``
layers, its first ``d_model`` channels, first ``ffn_dim`` FFN channels, first ``num_heads``
attention heads (Conformer, Stateformer with ``ssm_attention``) and first ``ssm_heads`` MH-SSM
heads (Stateformer), the first ``predictor_dim`` predictor channels and the first ``joiner_dim``
joiner channels. A field left ``None`` takes the supernet's value. How the weights are cut is
:mod:`asrq.supernet.elastic`; which combinations can be cut exactly is
:func:`check_sliceable`.

A :class:`SearchSpace` holds the choices per dimension (``supernet.search_space`` in the
experiment YAML, :class:`~asrq.config.SearchSpaceConfig`), validated against the supernet's
:class:`~asrq.config.ModelConfig`, with :meth:`SearchSpace.largest`,
:meth:`SearchSpace.smallest`, :meth:`SearchSpace.sample` and the per-step sandwich
:meth:`SearchSpace.sandwich` (a function of (seed, step) only, so every DDP rank trains the same
subnets).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from asrq.config import (
    EncoderConfig,
    ModelConfig,
    PredictorConfig,
    SearchSpaceConfig,
    from_dict,
    to_dict,
)
from asrq.utils.io import AsrqError

#: elastic dimensions, in the order specs list them
DIMS = ("num_layers", "d_model", "ffn_dim", "num_heads", "ssm_heads", "joiner_dim", "predictor_dim")


@dataclass(frozen=True)
class SubnetSpec:
    """One subnet of a supernet; ``None``: the supernet's value (see the module doc)."""

    num_layers: int | None = None
    d_model: int | None = None
    ffn_dim: int | None = None
    num_heads: int | None = None
    ssm_heads: int | None = None
    joiner_dim: int | None = None
    predictor_dim: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        return to_dict(self)

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def short(self) -> str:
        """Compact label, e.g. ``L4-d64-f128-h2-j64-p64`` (None fields left out)."""
        tags = {
            "num_layers": "L",
            "d_model": "d",
            "ffn_dim": "f",
            "num_heads": "h",
            "ssm_heads": "s",
            "joiner_dim": "j",
            "predictor_dim": "p",
        }
        return "-".join(f"{tags[k]}{v}" for k, v in self.to_dict().items() if v is not None)


def full_spec(cfg: ModelConfig) -> SubnetSpec:
    """The spec of the whole model (every dimension at the supernet's value). Dimensions the
    encoder does not have (Conformer: ``ssm_heads``; Stateformer without attention:
    ``num_heads``) stay None."""
    e = cfg.encoder
    attn = _has_attention(e)
    return SubnetSpec(
        num_layers=e.num_layers,
        d_model=e.d_model,
        ffn_dim=e.ffn_dim,
        num_heads=e.num_heads if attn else None,
        ssm_heads=e.ssm_heads if e.type == "stateformer" else None,
        joiner_dim=cfg.rnnt.joiner_dim,
        predictor_dim=cfg.rnnt.predictor.d_model,
    )


def _has_attention(e: EncoderConfig) -> bool:
    return e.type == "conformer" or e.ssm_attention


def resolve(cfg: ModelConfig, spec: SubnetSpec) -> SubnetSpec:
    """``spec`` with every None replaced by the supernet's value (dimensions the encoder lacks
    stay None; giving one is an error)."""
    full = full_spec(cfg)
    out = {}
    for k in DIMS:
        v, f = getattr(spec, k), getattr(full, k)
        if f is None and v is not None:
            raise AsrqError(f"subnet spec: {k}={v}, but a {_kind(cfg.encoder)} encoder has no {k}")
        out[k] = f if v is None else v
    return SubnetSpec(**out)


def _kind(e: EncoderConfig) -> str:
    return e.type + (
        " (without ssm_attention)" if e.type == "stateformer" and not e.ssm_attention else ""
    )


def _groups_width(p: int) -> int:
    """Channels per group of the predictor's grouped conv (``groups = max(1, p // 4)``)."""
    g = max(1, p // 4)
    return p // g if p % g == 0 else -1


def _attention_error(e: EncoderConfig, d: int, h: int) -> str | None:
    """Why ``h`` attention heads at width ``d`` cannot be cut from encoder ``e`` (None: they
    can)."""
    fold = e.fold
    if d % fold:
        return f"d_model={d} must divide by encoder.fold ({fold})"
    w = d // fold
    if w % h or (w // h) % 2:
        return f"d_model / fold = {w} must divide by num_heads={h} into an even head dim (rotary)"
    full_dh = (e.d_model // fold) // e.num_heads
    if w // h > full_dh:
        return (
            f"head dim d_model / fold / num_heads = {w}/{h} = {w // h} exceeds the supernet's "
            f"{full_dh} "
            f"(a subnet head is the front of a supernet head): use more heads or a larger d_model"
        )
    return None


def _ssm_error(e: EncoderConfig, d: int, hs: int) -> str | None:
    """Why ``hs`` MH-SSM heads at width ``d`` cannot be cut from encoder ``e`` (None: they can)."""
    if d % hs:
        return f"d_model={d} must divide by ssm_heads={hs}"
    full_p = e.d_model // e.ssm_heads
    if d // hs > full_p:
        return (
            f"MH-SSM head width d_model / ssm_heads = {d}/{hs} = {d // hs} exceeds the supernet's "
            f"{full_p}: "
            f"use more ssm_heads or a larger d_model"
        )
    return None


def _unused_heads(e: EncoderConfig, d: int) -> int:
    """``num_heads`` for the config of a width-``d`` subnet of an encoder without attention
    (Stateformer without ``ssm_attention``): unused, but EncoderConfig requires ``d / num_heads``
    to be an even integer, so the supernet's value if it fits, else 1."""
    h = e.num_heads
    return h if d % h == 0 and (d // h) % 2 == 0 else 1


def _predictor_error(cfg: ModelConfig, p: int) -> str | None:
    pred = cfg.rnnt.predictor
    if pred.context_size > 1 and _groups_width(p) != _groups_width(pred.d_model):
        return (
            f"predictor_dim={p} changes the predictor conv's channels per group (groups = d // 4): "
            "use a multiple of 4"
        )
    return None


#: The model heads a supernet can be elastic over (the elastic slicing knows their modules).
SUPERNET_HEADS: tuple[str, ...] = ("rnnt",)


def check_supernet_head(cfg: ModelConfig) -> None:
    """Raise :class:`AsrqError` unless a supernet can be built over ``cfg.head``."""
    if cfg.head not in SUPERNET_HEADS:
        raise AsrqError(
            f"supernets support model.head {' / '.join(SUPERNET_HEADS)} only (got {cfg.head!r})"
        )


def check_sliceable(cfg: ModelConfig, spec: SubnetSpec) -> SubnetSpec:
    """Raise :class:`AsrqError` unless ``spec`` (resolved against ``cfg``) can be cut exactly
    out of a model built from ``cfg``; returns the resolved spec.

    Rules: every dimension at most the supernet's; attention heads and MH-SSM heads at most as
    wide as the supernet's (a subnet head is the front of a supernet head:
    ``d_model / fold / num_heads <= D / fold / H`` and ``d_model / ssm_heads <= D / H_ssm``),
    plus the plain model's own rules (even rotary head dim, widths divisible by ``fold``, ...);
    the predictor's grouped conv keeps its channels per group.
    """
    check_supernet_head(cfg)
    s = resolve(cfg, spec)
    e = cfg.encoder
    full = full_spec(cfg)
    for k in DIMS:
        v, f = getattr(s, k), getattr(full, k)
        if v is not None and not 1 <= v <= f:
            raise AsrqError(f"subnet spec: {k}={v} must be in [1, {f}] (the supernet's {k})")
    errors = [
        f"ffn_dim={s.ffn_dim} must divide by encoder.fold ({e.fold})"
        if s.ffn_dim % e.fold
        else None,
        f"d_model={s.d_model} must divide by encoder.fold ({e.fold})"
        if s.d_model % e.fold
        else None,
        None if s.num_heads is None else _attention_error(e, s.d_model, s.num_heads),
        None if s.ssm_heads is None else _ssm_error(e, s.d_model, s.ssm_heads),
        f"d_model={s.d_model} must be even" if s.num_heads is None and s.d_model % 2 else None,
        _predictor_error(cfg, s.predictor_dim),
    ]
    for err in errors:
        if err:
            raise AsrqError(f"subnet spec {s.short()}: {err}")
    return s


def subnet_model_config(
    cfg: ModelConfig, spec: SubnetSpec, dropout: float | None = None
) -> ModelConfig:
    """The plain :class:`ModelConfig` of subnet ``spec`` of the supernet ``cfg`` (validated with
    :func:`check_sliceable`); ``dropout``: its encoder dropout (None: the supernet's)."""
    s = check_sliceable(cfg, spec)
    e = cfg.encoder
    enc = dict(e.__dict__, num_layers=s.num_layers, d_model=s.d_model, ffn_dim=s.ffn_dim)
    enc["num_heads"] = _unused_heads(e, s.d_model) if s.num_heads is None else s.num_heads
    if s.ssm_heads is not None:
        enc["ssm_heads"] = s.ssm_heads
    if dropout is not None:
        enc["dropout"] = float(dropout)
    out = copy.deepcopy(cfg)
    try:
        out.encoder = EncoderConfig(**enc)
        predictor = PredictorConfig(
            d_model=s.predictor_dim, context_size=cfg.rnnt.predictor.context_size
        )
        out.rnnt = dataclasses.replace(cfg.rnnt, predictor=predictor, joiner_dim=s.joiner_dim)
        out.__post_init__()
    except AsrqError as err:
        raise AsrqError(f"subnet spec {s.short()}: {err}") from err
    return out


# --------------------------------------------------------------------------------------------
# search space
# --------------------------------------------------------------------------------------------
class SearchSpace:
    """The choices per dimension of a supernet ``cfg`` (see the module doc).

    Validation (clear :class:`AsrqError` naming ``where``): every choice within the supernet,
    the largest choice equal to the supernet's value, no choices for a dimension the encoder
    lacks, and every choice usable in at least one exactly sliceable spec (each width has a
    head count that fits it, each head count a width). Empty choices fix a dimension at the
    supernet's value.
    """

    def __init__(
        self, space: SearchSpaceConfig, cfg: ModelConfig, where: str = "supernet.search_space"
    ) -> None:
        check_supernet_head(cfg)
        self.cfg = cfg
        self.where = where
        e, full = cfg.encoder, full_spec(cfg)
        self.choices: dict[str, list[int]] = {}
        for k in DIMS:
            given, f = list(getattr(space, k)), getattr(full, k)
            if f is None:
                if given:
                    raise AsrqError(f"{where}.{k}: a {_kind(e)} encoder has no {k}; leave it empty")
                continue
            choices = sorted(given) if given else [f]
            if choices[-1] != f:
                raise AsrqError(
                    f"{where}.{k}: the largest choice ({choices[-1]}) must be the supernet's value "
                    f"{f} "
                    f"(the supernet is its own largest subnet)"
                )
            self.choices[k] = choices
        for k in ("num_heads", "ssm_heads"):
            if k not in self.choices:
                continue
            for d in self.choices["d_model"]:
                if not self._heads_for(k, d):
                    raise AsrqError(
                        f"{where}: no {k} choice fits d_model {d} "
                        f"({self._head_error(k, d, self.choices[k][0])})"
                    )
            for h in self.choices[k]:
                if not any(self._head_error(k, d, h) is None for d in self.choices["d_model"]):
                    raise AsrqError(
                        f"{where}.{k}: choice {h} fits no d_model choice "
                        f"({self._head_error(k, self.choices['d_model'][-1], h)})"
                    )
        # the only constraints across dimensions are width x heads (checked above), so checking
        # each choice with the other dimensions at their largest covers every spec
        for k in ("num_layers", "d_model", "ffn_dim", "joiner_dim", "predictor_dim"):
            for c in self.choices[k]:
                d = c if k == "d_model" else full.d_model
                heads = {
                    h: self._heads_for(h, d)[-1]
                    for h in ("num_heads", "ssm_heads")
                    if h in self.choices
                }
                try:
                    subnet_model_config(cfg, dataclasses.replace(full, **{k: c}, **heads))
                except AsrqError as err:
                    raise AsrqError(f"{where}.{k}: choice {c}: {err}") from None

    def _head_error(self, k: str, d: int, h: int) -> str | None:
        e = self.cfg.encoder
        return _attention_error(e, d, h) if k == "num_heads" else _ssm_error(e, d, h)

    def _heads_for(self, k: str, d: int) -> list[int]:
        """The ``k`` (``num_heads`` / ``ssm_heads``) choices that slice exactly at width ``d``."""
        return [h for h in self.choices[k] if self._head_error(k, d, h) is None]

    def config(self) -> SearchSpaceConfig:
        """The resolved choices (every dimension explicit), for the checkpoint."""
        return SearchSpaceConfig(**self.choices)

    # ---- specs ------------------------------------------------------------------------------
    def _make(self, pick: Callable[[list[int]], int]) -> SubnetSpec:
        vals = {
            k: pick(self.choices[k])
            for k in ("num_layers", "d_model", "ffn_dim", "joiner_dim", "predictor_dim")
        }
        for k in ("num_heads", "ssm_heads"):
            if k in self.choices:
                vals[k] = pick(self._heads_for(k, vals["d_model"]))
        return SubnetSpec(**vals)

    def largest(self) -> SubnetSpec:
        return self._make(lambda c: c[-1])

    def smallest(self) -> SubnetSpec:
        """Every dimension at its smallest choice (heads: the fewest that fit the smallest
        width)."""
        return self._make(lambda c: c[0])

    def sample(self, generator: torch.Generator) -> SubnetSpec:
        """A uniformly random choice per dimension (heads: among those that fit the drawn width)."""
        return self._make(lambda c: c[int(torch.randint(len(c), (1,), generator=generator))])

    def sandwich(
        self, seed: int, step: int, num_random: int, pool: Sequence[SubnetSpec] = ()
    ) -> list[SubnetSpec]:
        """The sandwich rule for one training step: ``[largest, smallest, num_random random]``,
        a function of ``(seed, step)`` only (every rank and every resume draws the same). The
        random subnets come from :meth:`sample`, or uniformly from ``pool`` when it is given
        (e.g. the sizes one means to deploy; validated specs, see :meth:`pool`)."""
        g = torch.Generator().manual_seed(seed * 1_000_033 + step)
        if pool:
            rand = [
                pool[int(torch.randint(len(pool), (1,), generator=g))] for _ in range(num_random)
            ]
        else:
            rand = [self.sample(g) for _ in range(num_random)]
        return [self.largest(), self.smallest(), *rand]

    def pool(
        self, specs: Sequence[Mapping[str, int]], where: str = "supernet.sample_pool"
    ) -> list[SubnetSpec]:
        """Validated, resolved specs from a list of :class:`SubnetSpec` field mappings (missing
        fields: the supernet's value); an error naming ``where[i]`` for a bad one."""
        out = []
        for i, d in enumerate(specs):
            spec = from_dict(SubnetSpec, dict(d), where=f"{where}[{i}]")
            out.append(self.validate(spec, where=f"{where}[{i}]"))
        return out

    def validate(self, spec: SubnetSpec, where: str = "subnet spec") -> SubnetSpec:
        """The resolved ``spec``; an error naming ``where`` unless every value is one of the choices
        and the spec slices exactly."""
        try:
            s = resolve(self.cfg, spec)
            for k, choices in self.choices.items():
                if getattr(s, k) not in choices:
                    raise AsrqError(
                        f"{k}={getattr(s, k)} is not one of the supernet's choices {choices}"
                    )
            check_sliceable(self.cfg, s)
        except AsrqError as err:
            raise AsrqError(f"{where}: {err}") from None
        return s

    def named(self, name: str) -> SubnetSpec:
        """``largest`` or ``smallest``."""
        if name == "largest":
            return self.largest()
        if name == "smallest":
            return self.smallest()
        raise AsrqError(f"unknown spec name {name!r}: use largest, smallest or a spec YAML file")

    def all_specs(self) -> list[SubnetSpec]:
        """Every exactly sliceable spec (:meth:`size` of them), smallest dimensions first."""
        out = []
        for layers, d, f, j, p in itertools.product(
            *(
                self.choices[k]
                for k in ("num_layers", "d_model", "ffn_dim", "joiner_dim", "predictor_dim")
            )
        ):
            heads = self._heads_for("num_heads", d) if "num_heads" in self.choices else [None]
            ssm = self._heads_for("ssm_heads", d) if "ssm_heads" in self.choices else [None]
            for h, hs in itertools.product(heads, ssm):
                out.append(SubnetSpec(layers, d, f, h, hs, j, p))
        return out

    def size(self) -> int:
        """Number of distinct exactly sliceable specs."""
        n = 1
        for k in ("num_layers", "ffn_dim", "joiner_dim", "predictor_dim"):
            n *= len(self.choices[k])
        per_d = 0
        for d in self.choices["d_model"]:
            m = 1
            for k in ("num_heads", "ssm_heads"):
                if k in self.choices:
                    m *= len(self._heads_for(k, d))
            per_d += m
        return n * per_d


def load_spec(source: str | Path, space: SearchSpace) -> SubnetSpec:
    """A spec from ``largest`` / ``smallest`` or a YAML file of :class:`SubnetSpec` fields (missing
    fields: the supernet's value), validated against ``space``; errors name the file."""
    if str(source) in ("largest", "smallest"):
        return space.named(str(source))
    p = Path(source)
    if not p.is_file():
        raise AsrqError(f"{p}: spec file not found (or use --spec largest / smallest)")
    try:
        data: Any = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise AsrqError(f"{p}: not valid YAML ({e})") from e
    spec = from_dict(SubnetSpec, data, where=str(p))
    return space.validate(spec, where=str(p))
