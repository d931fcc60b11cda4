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

from asrq.quant.config import QatConfig
from asrq.utils.io import AsrqError

T = TypeVar("T")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise AsrqError(f"invalid config: {msg}")


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass
class SynthConfig:
    """The synthetic corpus in LibriSpeech layout (see asrq.data.synth).

    Speakers of train, dev-clean and test-clean come from espeak-ng and flite (``flite_share``
    of each split's speakers are flite voices); ``test_other_speakers`` festival speakers form
    test-other (0: no test-other). ``everyday_share`` of the sentences are everyday English
    (WordNet examples), the rest King James Bible clauses.
    """

    train_speakers: int = 48
    train_utts_per_speaker: int = 60
    dev_speakers: int = 4
    test_speakers: int = 6
    eval_utts_per_speaker: int = 20
    seed: int = 0
    min_words: int = 4
    max_words: int = 22
    flite_share: float = 0.3
    test_other_speakers: int = 6
    everyday_share: float = 0.5

    def __post_init__(self) -> None:
        for name in ("train_speakers", "dev_speakers", "test_speakers"):
            _check(getattr(self, name) >= 1, f"data.synth.{name} must be >= 1")
        _check(self.test_other_speakers >= 0, "data.synth.test_other_speakers must be >= 0")
        for name in ("flite_share", "everyday_share"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"data.synth.{name} must be in [0, 1]")


@dataclass
class AugmentConfig:
    """Waveform augmentation of training utterances (asrq.data.augment), each applied to an
    utterance with its probability, in this order: speed, reverb, noise, telephone, gain.
    All probabilities 0 (the default): no augmentation, stored features are used as they are.
    ``snr_range``/``gain_db_range`` in dB; ``babble_share``: share of noise draws that are
    babble (other utterances of the batch) rather than coloured noise."""

    speed_prob: float = 0.0
    speed_factors: list[float] = field(default_factory=lambda: [0.9, 1.1])
    reverb_prob: float = 0.0
    noise_prob: float = 0.0
    snr_range: list[float] = field(default_factory=lambda: [5.0, 25.0])
    babble_share: float = 0.3
    telephone_prob: float = 0.0
    gain_prob: float = 0.0
    gain_db_range: list[float] = field(default_factory=lambda: [-12.0, 6.0])
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "speed_prob",
            "reverb_prob",
            "noise_prob",
            "babble_share",
            "telephone_prob",
            "gain_prob",
        ):
            _check(0.0 <= getattr(self, name) <= 1.0, f"data.augment.{name} must be in [0, 1]")
        for name in ("snr_range", "gain_db_range"):
            r = getattr(self, name)
            _check(len(r) == 2 and r[0] <= r[1], f"data.augment.{name} must be [low, high]")
        _check(
            len(self.speed_factors) > 0 and all(f > 0 for f in self.speed_factors),
            "data.augment.speed_factors must be positive numbers",
        )

    @property
    def enabled(self) -> bool:
        return any(
            p > 0
            for p in (
                self.speed_prob,
                self.reverb_prob,
                self.noise_prob,
                self.telephone_prob,
                self.gain_prob,
            )
        )


@dataclass
class DataConfig:
    corpus_dir: str = "data/mini/LibriSpeech"
    manifest_dir: str = "data/mini/manifests"
    fbank_dir: str = "data/mini/fbank"
    lang_dir: str = "data/mini/lang_bpe"
    vocab_size: int = 256
    train_splits: list[str] = field(default_factory=lambda: ["train-clean-100"])
    dev_split: str = "dev-clean"
    test_split: str = "test-clean"
    #: a second test split the recipes also score (the mini corpus: festival voices, an engine
    #: never heard in training); "" or a split without cuts: skipped
    test_other_split: str = "test-other"
    speed_perturb: bool = False
    max_duration: float = 60.0  # seconds of audio per batch
    num_buckets: int = 8
    num_workers: int = 1
    spec_augment: bool = True
    synth: SynthConfig = field(default_factory=SynthConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _check(self.vocab_size >= 2, "data.vocab_size must be >= 2")
        _check(self.max_duration > 0, "data.max_duration must be > 0")

    @property
    def bpe_model(self) -> Path:
        return Path(self.lang_dir) / "bpe.model"


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
@dataclass
class OptimConfig:
    """ScaledAdam + Eden (icefall). ``lr_batches``/``lr_epochs`` are Eden's decay constants."""

    name: Literal["scaled_adam", "adamw"] = "scaled_adam"
    lr: float = 0.045
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    clipping_scale: float = 2.0
    weight_decay: float = 0.0
    lr_batches: float = 5000.0
    lr_epochs: float = 6.0
    warmup_batches: float = 300.0
    warmup_start: float = 0.5

    def __post_init__(self) -> None:
        _check(self.lr > 0, "train.optim.lr must be > 0")
        _check(len(self.betas) == 2, "train.optim.betas must have two values")


@dataclass
class LossConfig:
    """RNN-T loss setup. ``rnnt_type``: ``pruned`` (k2-style, written in PyTorch) or ``full``
    (torchaudio). The pruned loss is ``simple_loss_scale * simple + pruned``; both scales ramp
    over ``warm_steps`` as in icefall.

    ``ctc_weight`` is lambda of both heads: ``(1 - lambda) * rnnt + lambda * ctc`` (rnnt) and
    ``lambda * ctc + (1 - lambda) * attention`` (ctc_attention; WeNet uses 0.3)."""

    rnnt_type: Literal["pruned", "full"] = "pruned"
    prune_range: int = 5
    simple_loss_scale: float = 0.5
    lm_only_scale: float = 0.25
    am_only_scale: float = 0.0
    ctc_weight: float = 0.2
    warm_steps: int = 400
    label_smoothing: float = 0.1  # attention-decoder loss (model.head ctc_attention)

    def __post_init__(self) -> None:
        _check(self.prune_range >= 1, "train.loss.prune_range must be >= 1")
        _check(0.0 <= self.ctc_weight <= 1.0, "train.loss.ctc_weight in [0, 1]")
        _check(0.0 <= self.label_smoothing < 1.0, "train.loss.label_smoothing in [0, 1)")


@dataclass
class TrainConfig:
    exp_dir: str = "exp/mini"
    seed: int = 42
    max_steps: int = 0  # 0: no step limit
    max_minutes: float = 0.0  # 0: no time limit
    max_epochs: int = 100
    log_every: int = 25
    save_every: int = 200
    keep_last: int = 3
    eval_every_minutes: float = 0.0  # >0: greedy dev WER at this interval (the WER curve)
    eval_max_utts: int = 60
    # recipes only: >1 runs the train stage as `torchrun --nproc-per-node num_procs` (DDP, gloo,
    # one intra-op thread per process; measured on 2 cores: ~10% more audio/s than one process
    # with two threads, at twice the batch per step). data.max_duration is then per process.
    num_procs: int = 1
    # Weight averaging (icefall's model_avg, as an EMA): the averaged weights are what dev WER,
    # decoding and export use. Per-step decay (0 = off), warmed up as min(decay, (1+s)/(10+s));
    # updated every `average_every` steps. 0.995 averages roughly the last ~200 steps.
    average_decay: float = 0.995
    average_every: int = 5
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        _check(self.max_steps >= 0 and self.max_minutes >= 0, "train limits must be >= 0")
        _check(self.num_procs >= 1, "train.num_procs must be >= 1")
        _check(
            0.0 <= self.average_decay < 1.0,
            f"train.average_decay must be in [0, 1), got {self.average_decay}",
        )
        _check(
            self.average_every >= 1, f"train.average_every must be >= 1, got {self.average_every}"
        )


# --------------------------------------------------------------------------------------------
# Decode / export / bench
# --------------------------------------------------------------------------------------------
@dataclass
class DecodeConfig:
    method: Literal[
        "greedy", "modified_beam_search", "ctc_greedy", "ctc_prefix_beam", "attention_rescoring"
    ] = "greedy"
    beam: int = 4
    max_sym_per_frame: int = 1
    ctc_weight: float = 0.5  # attention_rescoring: total = ctc_weight * ctc + attention


@dataclass
class ExportConfig:
    opset: int = 18
    onnx: bool = True
    executorch: bool = True


@dataclass
class BenchConfig:
    threads: list[int] = field(default_factory=lambda: [1, 2])
    chunk_ms: int = 320
    max_files: int = 10


# --------------------------------------------------------------------------------------------
# Supernet (TODM: train once, deploy many; asrq.supernet)
# --------------------------------------------------------------------------------------------
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
