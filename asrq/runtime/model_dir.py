"""The exported model directory: its format constants, file names and ``metadata.json``, read
once (:func:`read_model_dir`) and handed to whatever needs it (runtimes, ``asrq transcribe``,
``asrq bench``).

Layout written by ``asrq export`` (:mod:`asrq.export.pipeline`)::

    <dir>/metadata.json  bpe.model  tokens.txt  <program><suffix> per program and backend

``metadata.json`` names the model's ``head``; exports made before it did are RNN-T (the head
tables map a missing ``head`` to their legacy entry). This module knows no head and no backend.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from asrq.utils.io import AsrqError

#: ``metadata.json``'s ``format`` value.
FORMAT = "asrq-export-v1"
METADATA = "metadata.json"
BPE_MODEL = "bpe.model"
TOKENS = "tokens.txt"
#: fbank frames per encoder frame (two stride-2 convolutions).
SUBSAMPLING = 4
#: Smallest full-context encoder output the export supports (T' = 1 specialises the graph).
MIN_ENCODER_STEPS = 2
#: lhotse's padding value for log-mel features.
LOG_EPSILON = math.log(1e-10)
#: The features every export takes (written into its metadata).
FEATURE: dict[str, Any] = {
    "type": "fbank",
    "extractor": "lhotse.Fbank(FbankConfig(num_mel_bins=80))",
    "num_mel_bins": 80,
    "sampling_rate": 16000,
    "frame_shift_ms": 10.0,
    "frame_length_ms": 25.0,
    "padding_value": LOG_EPSILON,
}


def encoder_input_frames(t: int) -> int:
    """The fbank length the full-context encoder program takes for ``t`` frames: the smallest
    ``4k + 3 >= t`` with ``k >= 2`` (the padded frames are masked out by ``x_lens``)."""
    k = max(MIN_ENCODER_STEPS, -(-(t - 3) // 4))
    return 4 * k + 3


def read_metadata(model_dir: str | Path) -> dict[str, Any]:
    """``<model_dir>/metadata.json`` with clear errors for a missing or foreign directory."""
    model_dir = Path(model_dir)
    path = model_dir / METADATA
    if not model_dir.is_dir():
        raise AsrqError(f"{model_dir}: model directory not found")
    if not path.is_file():
        raise AsrqError(f"{model_dir}: no {METADATA}; not an `asrq export` model directory")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AsrqError(f"{path}: unreadable metadata ({e})") from e
    if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith("asrq-export"):
        raise AsrqError(f"{path}: not asrq export metadata (no format 'asrq-export-*')")
    return meta


class StreamingState(NamedTuple):
    """One streaming encoder state as the export metadata declares it (shape at batch 1)."""

    name: str
    shape: tuple[int, ...]
    dtype: Any  # torch.dtype
    batch_axis: int


def streaming_states(meta: dict[str, Any]) -> list[StreamingState]:
    """The streaming encoder's states, in input order, from ``meta["model"]["states"]`` (written
    by :meth:`asrq.models.states.StateSpec.to_json`). Exports made before the metadata named its
    states are Conformers: ``attn_cache``, ``conv_cache`` (batch axis 1) and ``processed``
    (int64)."""
    import torch

    dtypes = {"float32": torch.float32, "int64": torch.int64}
    m = meta["model"]
    if "states" in m:
        return [
            StreamingState(d["name"], tuple(d["shape"]), dtypes[d["dtype"]], int(d["batch_axis"]))
            for d in m["states"]
        ]
    shapes = m["state_shapes"]
    return [
        StreamingState("attn_cache", tuple(shapes["attn_cache"]), torch.float32, 1),
        StreamingState("conv_cache", tuple(shapes["conv_cache"]), torch.float32, 1),
        StreamingState("processed", tuple(shapes["processed"]), torch.int64, 0),
    ]


def load_tokenizer(model_dir: str | Path) -> Any:
    """The export's ``bpe.model`` as a SentencePiece processor."""
    import sentencepiece as spm

    path = Path(model_dir) / BPE_MODEL
    if not path.is_file():
        raise AsrqError(f"{path}: BPE model not found in the model directory")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except Exception as e:  # sentencepiece raises OSError/RuntimeError
        raise AsrqError(f"{path}: not a SentencePiece model ({e})") from e
    return sp


@dataclass(frozen=True)
class ModelDir:
    """An ``asrq export`` directory with its metadata, read once (:func:`read_model_dir`)."""

    path: Path
    meta: dict[str, Any]

    @property
    def head(self) -> str | None:
        """The ``head`` the export names; None for exports made before it was written (RNN-T)."""
        return self.meta.get("head")

    @property
    def model(self) -> dict[str, Any]:
        """``metadata["model"]``: vocabulary, chunk, states and the head's own numbers."""
        return self.meta["model"]

    @property
    def backends(self) -> list[str]:
        """The backends this export wrote programs for."""
        return sorted(self.meta.get("programs", {}))

    def check_backend(self, backend: str) -> None:
        """A clear error when this export has no programs for ``backend``."""
        if backend not in self.meta.get("programs", {}):
            raise AsrqError(
                f"{self.path}: no {backend} programs in this export (it has {self.backends}); "
                f"re-export with --{backend}"
            )

    def tokenizer(self) -> Any:
        """The export's SentencePiece model."""
        return load_tokenizer(self.path)


def read_model_dir(model_dir: str | Path | ModelDir) -> ModelDir:
    """A :class:`ModelDir` (``metadata.json`` read and checked); a ``ModelDir`` passes through."""
    if isinstance(model_dir, ModelDir):
        return model_dir
    return ModelDir(Path(model_dir), read_metadata(model_dir))
