"""Model configs: the encoder, streaming, one section per head (RNN-T with its predictor,
CTC/attention with its decoder), ``HEAD_METHODS``, and the upgrade of older stored layouts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from asrq.config.checks import _check
from asrq.utils.io import AsrqError


@dataclass
class EncoderConfig:
    """Encoder architecture. ``type`` picks the block: ``conformer`` (MH self-attention with
    rotary positions + causal depthwise conv) or ``stateformer`` (multi-head state space layer
    in place of the attention, optionally with attention beside it; asrq.models.stateformer).

    ``ssm_*`` configure the stateformer's MH-SSM: ``ssm_heads`` heads (``d_model`` divides by it),
    each a diagonal SSM with ``ssm_state_dim`` complex states; ``ssm_attention`` adds the chunked
    self-attention of the Conformer to each block.

    ``fold``: folding attention (asrq.models.conformer): attention projections and FFNs act on
    ``fold`` sub-tokens of width ``d_model / fold`` per token, shrinking those weights by
    ``fold^2``. Rule: ``d_model`` and ``ffn_dim`` divide by ``fold``, and where there is attention
    the sub-token width ``d_model / fold`` divides by ``num_heads`` into an even head dim (rotary).
    """

    type: Literal["conformer", "stateformer"] = "conformer"
    feature_dim: int = 80
    subsampling: int = 4
    num_layers: int = 8
    d_model: int = 144
    num_heads: int = 4
    ffn_dim: int = 576
    conv_kernel: int = 15
    dropout: float = 0.1
    rotary_base: float = 10000.0
    alibi: bool = True  # ALiBi distance bias on attention (see RotarySelfAttention)
    block_final_norm: bool = (
        False  # LayerNorm at the end of every block (Gulati) vs once at the output
    )
    ssm_heads: int = 4
    ssm_state_dim: int = 16
    ssm_attention: bool = False
    fold: int = 1
    # residual-branch output projections start at this fraction of their default init, so a
    # fresh deep stack starts close to a shallow one: on the mini corpus 0.1 left the CTC blank
    # plateau ~200 steps (about 40%) sooner than 1.0 (asrq.models.conformer.scale_residual_outputs)
    residual_init_scale: float = 0.1

    def __post_init__(self) -> None:
        _check(self.subsampling == 4, "encoder.subsampling: only 4 is supported")
        _check(self.num_layers >= 1, "encoder.num_layers must be >= 1")
        _check(self.num_heads >= 1, "encoder.num_heads must be >= 1")
        _check(
            self.d_model % self.num_heads == 0, "encoder.d_model must divide by encoder.num_heads"
        )
        _check((self.d_model // self.num_heads) % 2 == 0, "encoder head dim must be even (rotary)")
        _check(self.conv_kernel >= 2, "encoder.conv_kernel must be >= 2")
        _check(0.0 <= self.dropout < 1.0, "encoder.dropout must be in [0, 1)")
        _check(self.fold >= 1, f"encoder.fold must be >= 1 (got {self.fold})")
        _check(self.residual_init_scale > 0, "encoder.residual_init_scale must be > 0")
        _check(
            self.d_model % self.fold == 0 and self.ffn_dim % self.fold == 0,
            f"encoder.d_model ({self.d_model}) and encoder.ffn_dim ({self.ffn_dim}) must divide by "
            f"encoder.fold ({self.fold})",
        )
        if self.type == "conformer" or self.ssm_attention:
            width = self.d_model // self.fold
            _check(
                width % self.num_heads == 0 and (width // self.num_heads) % 2 == 0,
                f"encoder.fold {self.fold}: the sub-token width d_model / fold = {width} must "
                f"divide by encoder.num_heads ({self.num_heads}) into an even head dim (rotary)",
            )
        if self.type == "stateformer":
            _check(self.ssm_heads >= 1, "encoder.ssm_heads must be >= 1")
            _check(
                self.d_model % self.ssm_heads == 0,
                f"encoder.d_model ({self.d_model}) must divide by encoder.ssm_heads "
                f"({self.ssm_heads})",
            )
            _check(self.ssm_state_dim >= 1, "encoder.ssm_state_dim must be >= 1")


@dataclass
class StreamingConfig:
    """Chunked attention for streaming (WeNet U2 dynamic chunk training).

    Units are encoder frames (after subsampling; 40 ms each at 10 ms fbank hop and x4).
    During training, with probability ``dynamic_chunk_prob`` a batch uses a chunk size drawn
    uniformly from ``[1, max_train_chunk]`` and a left context drawn from ``left_chunk_choices``;
    otherwise full context. ``chunk_frames`` / ``left_frames`` are the inference and export
    defaults.
    """

    dynamic_chunk_prob: float = 0.5
    max_train_chunk: int = 16
    left_chunk_choices: list[int] = field(default_factory=lambda: [-1, 4, 8])
    chunk_frames: int = 8
    left_frames: int = 64

    def __post_init__(self) -> None:
        _check(0.0 <= self.dynamic_chunk_prob <= 1.0, "streaming.dynamic_chunk_prob in [0, 1]")
        _check(self.chunk_frames >= 1, "streaming.chunk_frames must be >= 1")
        _check(self.left_frames >= 0, "streaming.left_frames must be >= 0")
        _check(self.max_train_chunk >= 1, "streaming.max_train_chunk must be >= 1")


@dataclass
class PredictorConfig:
    """Stateless RNN-T predictor: embedding + 1-D conv over the last ``context_size`` tokens."""

    d_model: int = 256
    context_size: int = 2

    def __post_init__(self) -> None:
        _check(self.context_size >= 1, "model.rnnt.predictor.context_size must be >= 1")


@dataclass
class AttentionDecoderConfig:
    """Transformer attention decoder of the ``ctc_attention`` head (asrq.models.ctc_attention).

    Its width is the encoder's ``d_model`` (the cross-attention reads the encoder output
    directly). ``sos_eos_id`` is both the start and the end symbol: the tokenizer's dedicated
    ``<sos/eos>`` id 1 (asrq.data.bpe), never produced by ``Tokenizer.encode``; WeNet puts it at
    ``vocab_size - 1`` because its token table lists it last.
    """

    num_layers: int = 3
    num_heads: int = 4
    ffn_dim: int = 0  # 0: 4 x the encoder width
    dropout: float = 0.1
    sos_eos_id: int = 1

    def __post_init__(self) -> None:
        _check(self.num_layers >= 1, "model.ctc_attention.decoder.num_layers must be >= 1")
        _check(self.num_heads >= 1, "model.ctc_attention.decoder.num_heads must be >= 1")
        _check(
            self.ffn_dim >= 0,
            "model.ctc_attention.decoder.ffn_dim must be >= 0 (0: 4 x the encoder width)",
        )
        _check(0.0 <= self.dropout < 1.0, "model.ctc_attention.decoder.dropout must be in [0, 1)")
        _check(self.sos_eos_id >= 0, "model.ctc_attention.decoder.sos_eos_id must be >= 0")


@dataclass
class RnntConfig:
    """The ``rnnt`` head (``model.rnnt``): stateless predictor, joiner of width ``joiner_dim``
    and, with ``ctc_head``, an auxiliary CTC projection on the encoder output."""

    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    joiner_dim: int = 256
    ctc_head: bool = True  # auxiliary CTC head

    def __post_init__(self) -> None:
        _check(self.joiner_dim >= 1, "model.rnnt.joiner_dim must be >= 1")


@dataclass
class CtcAttentionConfig:
    """The ``ctc_attention`` head (``model.ctc_attention``): CTC projection + attention
    ``decoder`` (WeNet U2++ style)."""

    decoder: AttentionDecoderConfig = field(default_factory=AttentionDecoderConfig)


#: The model heads; each has a section of the same name in :class:`ModelConfig`.
Head = Literal["rnnt", "ctc_attention"]

#: Decoding methods per model head (``decode.method`` is checked against it at load). On a
#: ``ctc_attention`` model ``greedy`` means ``ctc_greedy`` (its greedy search).
HEAD_METHODS: dict[str, tuple[str, ...]] = {
    "rnnt": ("greedy", "modified_beam_search", "ctc_greedy"),
    "ctc_attention": ("greedy", "ctc_greedy", "ctc_prefix_beam", "attention_rescoring"),
}


@dataclass
class ModelConfig:
    """``head``: ``rnnt`` (transducer + auxiliary CTC; its settings in ``rnnt``) or
    ``ctc_attention`` (hybrid CTC / attention, WeNet U2++ style; its settings in
    ``ctc_attention``). The other head's section is unused.

    ``vocab_size`` 0 means "the tokenizer's": :func:`resolve_model_config` returns the config
    with it filled in (training does this from the BPE model)."""

    head: Head = "rnnt"
    vocab_size: int = 0
    blank_id: int = 0
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    rnnt: RnntConfig = field(default_factory=RnntConfig)
    ctc_attention: CtcAttentionConfig = field(default_factory=CtcAttentionConfig)

    def __post_init__(self) -> None:
        _check(self.vocab_size >= 0, "model.vocab_size must be >= 0")
        _check(self.head in HEAD_METHODS, f"model.head {self.head!r}: one of {list(HEAD_METHODS)}")
        if self.head == "ctc_attention":
            heads = self.ctc_attention.decoder.num_heads
            _check(
                self.encoder.d_model % heads == 0,
                f"model.ctc_attention.decoder.num_heads ({heads}) must divide "
                f"model.encoder.d_model ({self.encoder.d_model})",
            )

    @property
    def has_ctc(self) -> bool:
        """Whether the model has a CTC projection (always for ``ctc_attention``)."""
        return self.head != "rnnt" or self.rnnt.ctc_head


def resolve_model_config(cfg: ModelConfig, vocab_size: int, where: str = "") -> ModelConfig:
    """``cfg`` with the tokenizer-dependent fields filled in: ``vocab_size`` (0 in ``cfg``:
    take the tokenizer's; otherwise it must equal it). Returns a new config (``cfg`` is not
    changed). ``where`` names the tokenizer in the error."""
    if cfg.vocab_size not in (0, vocab_size):
        raise AsrqError(
            f"model.vocab_size={cfg.vocab_size} but {where or 'the tokenizer'} has "
            f"{vocab_size} tokens"
        )
    return dataclasses.replace(cfg, vocab_size=vocab_size)


#: Keys of the old flat ``model`` layout and where they live now.
_FLAT_MODEL_KEYS = {
    "predictor": ("rnnt", "predictor"),
    "joiner_dim": ("rnnt", "joiner_dim"),
    "ctc_head": ("rnnt", "ctc_head"),
    "decoder": ("ctc_attention", "decoder"),
}


def upgrade_model_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A stored ``model`` config dict in the current layout: the flat layout of older
    checkpoints and exports (``predictor``, ``joiner_dim``, ``ctc_head`` and ``decoder`` at
    the model level) moves into ``rnnt`` / ``ctc_attention``. Returns a new dict; a dict
    already in the current layout comes back equal."""
    out = dict(data)
    for old, (section, key) in _FLAT_MODEL_KEYS.items():
        if old in out:
            sub = dict(out.get(section) or {})
            sub.setdefault(key, out.pop(old))
            out[section] = sub
    return out


def upgrade_config_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A stored experiment config dict (checkpoint, export metadata) in the current layout
    (see :func:`upgrade_model_dict`; a stored ``decode.method`` of the other head becomes
    ``greedy``). Returns a new dict."""
    out = dict(data)
    if isinstance(out.get("model"), dict):
        out["model"] = upgrade_model_dict(out["model"])
    # before decode.method was checked against the head at load, a file could store a method
    # of the other head (it failed only when decoding): such a file reads as `greedy`
    head = (out.get("model") or {}).get("head", "rnnt")
    decode = out.get("decode")
    if isinstance(decode, dict) and decode.get("method") not in HEAD_METHODS.get(head, (None,)):
        out["decode"] = {**decode, "method": "greedy"}
    return out
