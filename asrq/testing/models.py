"""Shared test dummies: a tiny (randomly initialised) model checkpoint with a real
SentencePiece model, so decode/export/transcribe tests need no training run."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch

from asrq.config import EncoderConfig, ExperimentConfig
from asrq.models import build_model, preset_config
from asrq.models.ctc_attention import CtcAttentionModel
from asrq.train.checkpoint import model_payload, save_checkpoint

SENTENCES = [
    "IN THE BEGINNING GOD CREATED THE HEAVEN AND THE EARTH",
    "AND THE EARTH WAS WITHOUT FORM AND VOID",
    "AND DARKNESS WAS UPON THE FACE OF THE DEEP",
    "AND THE SPIRIT OF GOD MOVED UPON THE FACE OF THE WATERS",
    "AND GOD SAID LET THERE BE LIGHT AND THERE WAS LIGHT",
    "AND GOD SAW THE LIGHT THAT IT WAS GOOD",
    "AND GOD DIVIDED THE LIGHT FROM THE DARKNESS",
    "AND THE EVENING AND THE MORNING WERE THE FIRST DAY",
]


def tiny_bpe_bytes(vocab_size: int = 48) -> bytes:
    """A real SentencePiece model (``<blk>``=0, ``<sos/eos>``=1, ``<unk>``=2) trained in memory."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 20),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        user_defined_symbols=["<blk>", "<sos/eos>"],
        unk_id=2,
        bos_id=-1,
        eos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    return model.getvalue()


def tiny_config(
    vocab_size: int = 48,
    streaming_left: int = 16,
    chunk: int = 4,
    encoder: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """The tiny preset; ``encoder``: overrides of its EncoderConfig (e.g. ``{"type":
    "stateformer"}``)."""
    cfg = ExperimentConfig()
    cfg.model = preset_config("tiny", vocab_size, cfg.model)
    cfg.model.streaming.chunk_frames = chunk
    cfg.model.streaming.left_frames = streaming_left
    cfg.model.encoder = EncoderConfig(
        **{**cfg.model.encoder.__dict__, "dropout": 0.0, **(encoder or {})}
    )
    return cfg


def make_tiny_checkpoint(
    path: str | Path, vocab_size: int = 48, seed: int = 0, encoder: dict[str, Any] | None = None
) -> Path:
    """Write a randomly initialised tiny RNN-T checkpoint at ``path`` (a Conformer unless
    ``encoder`` overrides say otherwise)."""
    torch.manual_seed(seed)
    cfg = tiny_config(vocab_size, encoder=encoder)
    model = build_model(cfg.model)
    return save_checkpoint(path, model_payload(model, cfg, tiny_bpe_bytes(vocab_size), step=0))


def tiny_ctc_attention_config(
    vocab_size: int = 48, streaming_left: int = 16, chunk: int = 4
) -> ExperimentConfig:
    """The tiny encoder with the hybrid CTC / attention head and a 2-layer decoder."""
    cfg = tiny_config(vocab_size, streaming_left, chunk)
    cfg.model.head = CtcAttentionModel.head
    decoder = cfg.model.ctc_attention.decoder
    decoder.num_layers = 2
    decoder.num_heads = 2
    decoder.ffn_dim = 128
    decoder.dropout = 0.0
    cfg.train.loss.ctc_weight = 0.3
    return cfg


def make_tiny_ctc_attention_checkpoint(
    path: str | Path, vocab_size: int = 48, seed: int = 0
) -> Path:
    """Write a randomly initialised tiny hybrid CTC / attention checkpoint at ``path``."""
    torch.manual_seed(seed)
    cfg = tiny_ctc_attention_config(vocab_size)
    model = build_model(cfg.model)
    return save_checkpoint(path, model_payload(model, cfg, tiny_bpe_bytes(vocab_size), step=0))


#: a search space of the tiny preset (2 layers, d 64, 2 heads, FFN 128, joiner / predictor 64)
TINY_SEARCH_SPACE: dict[str, list[int]] = dict(
    num_layers=[1, 2],
    d_model=[32, 48, 64],
    ffn_dim=[64, 128],
    num_heads=[1, 2],
    joiner_dim=[32, 64],
    predictor_dim=[32, 64],
)


def tiny_supernet_config(
    vocab_size: int = 48, encoder: dict[str, Any] | None = None, **supernet: Any
) -> ExperimentConfig:
    """:func:`tiny_config` with a ``supernet:`` section over :data:`TINY_SEARCH_SPACE` (a
    Stateformer encoder gets ``ssm_heads`` [2, 4] and, without ``ssm_attention``, no
    ``num_heads``)."""
    from asrq.config import SearchSpaceConfig, SupernetConfig

    cfg = tiny_config(vocab_size, encoder=encoder)
    space = dict(TINY_SEARCH_SPACE)
    e = cfg.model.encoder
    if e.type == "stateformer":
        space["ssm_heads"] = [h for h in (2, 4) if h <= e.ssm_heads] or [e.ssm_heads]
        if not e.ssm_attention:
            space.pop("num_heads")
    cfg.supernet = SupernetConfig(search_space=SearchSpaceConfig(**space), **supernet)
    return cfg


def tiny_supernet(
    vocab_size: int = 48, seed: int = 0, encoder: dict[str, Any] | None = None, noise: float = 0.1
) -> tuple[torch.nn.Module, ExperimentConfig]:
    """A tiny supernet (:func:`tiny_supernet_config`) and its config: random weights, every saved
    tensor (LayerNorms and CMVN included) perturbed by ``noise`` so that slicing mistakes cannot
    hide behind ones and zeros."""
    torch.manual_seed(seed)
    cfg = tiny_supernet_config(vocab_size, encoder=encoder)
    model = build_model(cfg.model)
    with torch.no_grad():
        for t in model.state_dict().values():  # parameters and persistent buffers
            if t.is_floating_point():
                t.add_(noise * torch.randn_like(t))
    return model, cfg


def make_tiny_supernet_checkpoint(
    path: str | Path, vocab_size: int = 48, seed: int = 0, encoder: dict[str, Any] | None = None
) -> Path:
    """Write the :func:`tiny_supernet` checkpoint at ``path`` (a final ``model.pt``-style file)."""
    model, cfg = tiny_supernet(vocab_size, seed, encoder)
    return save_checkpoint(path, model_payload(model, cfg, tiny_bpe_bytes(vocab_size), step=0))
