"""Model builders: a generic :func:`build_model` from a :class:`ModelConfig`, and named size
presets on top of it (STYLE.md point 5)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

from torch import nn

from asrq.config import EncoderConfig, ModelConfig, PredictorConfig
from asrq.models.base import EncoderCtcModel
from asrq.models.conformer import ConformerEncoder
from asrq.models.ctc_attention import AttentionDecoder, CtcAttentionModel
from asrq.models.stateformer import StateformerEncoder
from asrq.models.transducer import Joiner, Predictor, Transducer

#: Encoder classes by ``model.encoder.type``.
ENCODERS: dict[str, Callable[[EncoderConfig], nn.Module]] = {
    "conformer": ConformerEncoder,
    "stateformer": StateformerEncoder,
}


def build_encoder(cfg: EncoderConfig) -> nn.Module:
    if cfg.type not in ENCODERS:
        raise ValueError(f"unknown encoder type {cfg.type!r}; known: {sorted(ENCODERS)}")
    return ENCODERS[cfg.type](cfg)


def _build_rnnt(cfg: ModelConfig, encoder: nn.Module) -> Transducer:
    r = cfg.rnnt
    predictor = Predictor(
        cfg.vocab_size, r.predictor.d_model, cfg.blank_id, r.predictor.context_size
    )
    joiner = Joiner(encoder.output_dim, r.predictor.d_model, r.joiner_dim, cfg.vocab_size)
    return Transducer(encoder, predictor, joiner, cfg.vocab_size, cfg.blank_id, r.ctc_head)


def _build_ctc_attention(cfg: ModelConfig, encoder: nn.Module) -> CtcAttentionModel:
    dec = cfg.ctc_attention.decoder
    decoder = AttentionDecoder(cfg.vocab_size, encoder.output_dim, dec)
    return CtcAttentionModel(encoder, decoder, cfg.vocab_size, cfg.blank_id, dec.sos_eos_id)


#: The model builder per head (``model.head``): (resolved config, built encoder) -> model.
#: A new head is a new entry here (and in ``asrq.config.HEAD_METHODS`` and the decode,
#: export and runtime head tables).
HEADS: dict[str, Callable[[ModelConfig, nn.Module], EncoderCtcModel]] = {
    Transducer.head: _build_rnnt,
    CtcAttentionModel.head: _build_ctc_attention,
}


def build_model(cfg: ModelConfig) -> EncoderCtcModel:
    """Build the model a resolved :class:`ModelConfig` describes (``vocab_size`` must be set;
    see :func:`asrq.config.resolve_model_config`): the builder of :data:`HEADS` for
    ``cfg.head`` on the encoder of ``cfg.encoder``. The model's ``head`` is ``cfg.head``."""
    if cfg.vocab_size <= 0:
        raise ValueError(
            "model.vocab_size is 0: resolve it first (asrq.config.resolve_model_config; "
            "training fills it from the BPE model)"
        )
    if cfg.head not in HEADS:
        raise ValueError(f"unknown model head {cfg.head!r}; known: {sorted(HEADS)}")
    return HEADS[cfg.head](cfg, build_encoder(cfg.encoder))


#: Named sizes: (encoder overrides, predictor dim, joiner dim).
PRESETS: dict[str, dict] = {
    # the test model: 2 layers, d=64
    "tiny": dict(
        encoder=dict(num_layers=2, d_model=64, num_heads=2, ffn_dim=128, conv_kernel=7),
        predictor=64,
        joiner=64,
    ),
    # the default mini recipe model (~4M parameters at vocab 256)
    "mini": dict(
        encoder=dict(num_layers=8, d_model=144, num_heads=4, ffn_dim=576, conv_kernel=15),
        predictor=256,
        joiner=256,
    ),
    # a LibriSpeech starting point (30.4M at vocab 500: recipes/librispeech/config.yaml)
    "small": dict(
        encoder=dict(num_layers=12, d_model=320, num_heads=8, ffn_dim=1280, conv_kernel=31),
        predictor=512,
        joiner=512,
    ),
}


def preset_config(name: str, vocab_size: int, base: ModelConfig | None = None) -> ModelConfig:
    """A :class:`ModelConfig` for a named preset (``tiny``, ``mini``, ``small``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    p = PRESETS[name]
    cfg = copy.deepcopy(base) if base is not None else ModelConfig()
    cfg.vocab_size = vocab_size
    cfg.encoder = EncoderConfig(**{**cfg.encoder.__dict__, **p["encoder"]})
    predictor = PredictorConfig(
        d_model=p["predictor"], context_size=cfg.rnnt.predictor.context_size
    )
    cfg.rnnt = dataclasses.replace(cfg.rnnt, predictor=predictor, joiner_dim=p["joiner"])
    return cfg


def conformer_rnnt_tiny(vocab_size: int) -> Transducer:
    return build_model(preset_config("tiny", vocab_size))


def conformer_rnnt_mini(vocab_size: int) -> Transducer:
    return build_model(preset_config("mini", vocab_size))
