"""Transcribe audio files with an exported model (``asrq transcribe``).

Each file is read and turned into fbank (:mod:`asrq.runtime.audio`), run through the exported
programs (:mod:`asrq.runtime.backends`) and decoded by the shared search code
(:mod:`asrq.decode.search` / :mod:`asrq.decode.streaming`), which only sees the
:class:`~asrq.decode.interface.RnntComponents` interface.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch

from asrq.decode.search import greedy_search, modified_beam_search
from asrq.decode.streaming import stream_decode
from asrq.runtime import longform
from asrq.runtime.audio import load_features
from asrq.runtime.backends import ExportedRnnt, load_rnnt, read_metadata
from asrq.utils.io import AsrqError

Method = Literal["greedy", "modified_beam_search"]
METHODS: tuple[str, ...] = ("greedy", "modified_beam_search")


def load_tokenizer(model_dir: str | Path):
    """The export's ``bpe.model`` as a SentencePiece processor."""
    import sentencepiece as spm

    path = Path(model_dir) / "bpe.model"
    if not path.is_file():
        raise AsrqError(f"{path}: BPE model not found in the model directory")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except Exception as e:  # sentencepiece raises OSError/RuntimeError
        raise AsrqError(f"{path}: not a SentencePiece model ({e})") from e
    return sp


def decode_features(
    comp: ExportedRnnt,
    feats: torch.Tensor,
    streaming: bool = False,
    method: Method = "greedy",
    beam: int = 4,
) -> list[int]:
    """Tokens of one utterance's fbank ``(T, F)``: full-context encoder + search, or chunk by
    chunk through the streaming encoder (:func:`asrq.decode.streaming.stream_decode`)."""
    if method not in METHODS:
        raise AsrqError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    if streaming:
        return stream_decode(comp, feats, method=method, beam=beam)
    enc, lens = comp.encode(feats[None], torch.tensor([feats.shape[0]], dtype=torch.int64))
    if method == "greedy":
        return greedy_search(comp, enc, lens)[0]
    return modified_beam_search(comp, enc, lens, beam=beam)[0]


def iter_transcripts(
    model_dir: str | Path,
    paths: Sequence[str | Path],
    backend: str = "onnx",
    streaming: bool = False,
    method: Method = "greedy",
    threads: int = 1,
    beam: int = 4,
) -> Iterator[tuple[str, str]]:
    """Yield ``(path, text)`` per file as it is decoded. All paths are checked before the model
    loads, so a typo fails fast with the file's name."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise AsrqError(
            f"{missing[0]}: audio file not found"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    meta = read_metadata(model_dir)  # a clear error for a wrong directory before anything else
    if meta.get("head") == "ctc_attention":  # hybrid CTC / attention: its own programs and searches
        from asrq.runtime import ctc_attention

        yield from ctc_attention.iter_transcripts(
            model_dir, paths, backend, streaming, method, threads, beam
        )
        return
    if method not in METHODS:
        raise AsrqError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    sp = load_tokenizer(model_dir)
    preload = ("encoder_streaming",) if streaming else ("encoder",)
    comp = load_rnnt(model_dir, backend, threads, preload=(*preload, "predictor", "joiner"))
    for p in paths:
        if not streaming and longform.should_segment(p):  # long file: segment by segment
            tokens_of = lambda f: decode_features(comp, f, False, method, beam)  # noqa: E731
            yield str(p), longform.transcribe_long(p, tokens_of, sp.decode)
            continue
        feats = load_features(p)
        tokens = decode_features(comp, feats, streaming, method, beam)
        yield str(p), sp.decode([int(t) for t in tokens])


def transcribe(
    model_dir: str | Path,
    paths: Sequence[str | Path],
    backend: str = "onnx",
    streaming: bool = False,
    method: Method = "greedy",
    threads: int = 1,
    beam: int = 4,
) -> list[tuple[str, str]]:
    """Transcribe audio files with the exported model in ``model_dir`` -> ``[(path, text)]``."""
    return list(iter_transcripts(model_dir, paths, backend, streaming, method, threads, beam))
