"""Transcribe audio files with an exported model (``asrq transcribe``).

The model directory is read once (:func:`asrq.runtime.model_dir.read_model_dir`); its head's
runtime (:data:`asrq.runtime.heads.RUNTIME_HEADS`) loads the programs and decodes each file's
fbank (:mod:`asrq.runtime.audio`) with the shared search code.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from asrq.runtime import longform
from asrq.runtime.audio import load_features
from asrq.runtime.heads import runtime_head
from asrq.runtime.model_dir import ModelDir, load_tokenizer, read_model_dir
from asrq.utils.io import AsrqError

__all__ = ["iter_transcripts", "load_tokenizer", "transcribe"]


def iter_transcripts(
    model_dir: str | Path | ModelDir,
    paths: Sequence[str | Path],
    backend: str = "onnx",
    streaming: bool = False,
    method: str = "greedy",
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
    md = read_model_dir(model_dir)  # a clear error for a wrong directory before anything else
    head = runtime_head(md)
    head.check_method(method)
    sp = md.tokenizer()
    decode = head.transcriber(md, backend, streaming, method, threads, beam)
    for p in paths:
        if not streaming and longform.should_segment(p):  # long file: segment by segment
            yield str(p), longform.transcribe_long(p, decode, sp.decode)
            continue
        yield str(p), sp.decode(decode(load_features(p)))


def transcribe(
    model_dir: str | Path | ModelDir, paths: Sequence[str | Path], *args: Any, **kwargs: Any
) -> list[tuple[str, str]]:
    """Transcribe audio files with the exported model in ``model_dir`` -> ``[(path, text)]``;
    the other arguments are :func:`iter_transcripts`'s."""
    return list(iter_transcripts(model_dir, paths, *args, **kwargs))
