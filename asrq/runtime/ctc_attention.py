"""Exported hybrid CTC / attention programs behind
:class:`~asrq.decode.ctc_attention.CtcAttentionComponents` (``asrq transcribe`` / ``asrq bench``).

A ctc_attention model directory (``metadata.json`` ``head: ctc_attention``; see
:mod:`asrq.export.ctc_attention`) holds ``encoder``, ``encoder_streaming`` and ``decoder`` per
backend. The programs run in onnxruntime or the ExecuTorch runtime through the same runners as
the RNN-T (:class:`~asrq.runtime.backends.OnnxPrograms`,
:class:`~asrq.runtime.backends.ExecutorchPrograms`); the search code is
:mod:`asrq.decode.ctc_attention`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asrq.decode import ctc_attention as CA
from asrq.runtime.backends import (
    BACKENDS,
    ExecutorchPrograms,
    OnnxPrograms,
    _pad_time,
    encoder_input_frames,
    read_metadata,
    streaming_states,
)
from asrq.utils.io import AsrqError

HEAD = "ctc_attention"
#: ``asrq transcribe`` methods for this head; ``greedy`` is CTC greedy.
METHODS: tuple[str, ...] = ("greedy", *CA.METHODS)


def is_ctc_attention(meta: dict[str, Any]) -> bool:
    return meta.get("head") == HEAD


class ExportedCtcAttention:
    """:class:`~asrq.decode.ctc_attention.CtcAttentionComponents` over a program runner.

    Args:
        programs: :class:`OnnxPrograms` or :class:`ExecutorchPrograms`.
        meta: the export's metadata.
        preload: program names to load now (the rest load on first use).
    """

    def __init__(
        self,
        programs: OnnxPrograms | ExecutorchPrograms,
        meta: dict[str, Any],
        preload: Sequence[str] = (),
    ) -> None:
        if not is_ctc_attention(meta):
            raise AsrqError(
                f"{programs.model_dir}: not a ctc_attention export (head {meta.get('head', 'rnnt')!r})"
            )
        self.programs = programs
        self.meta = meta
        m = meta["model"]
        self.vocab_size = int(m["vocab_size"])
        self.blank_id = int(m["blank_id"])
        self.sos_id = int(m["sos_id"])
        self.eos_id = int(m["eos_id"])
        self.chunk_frames = int(m["chunk_frames"])
        self.left_frames = int(m["left_frames"])
        self.feature_dim = int(m["feature_dim"])
        self.states = streaming_states(meta)  # batch 1
        ex = meta.get("programs", {}).get(programs.backend, {})
        self.max_encoder_frames: int | None = ex.get("encoder", {}).get("max_fbank_frames")
        self.max_decoder_tokens: int | None = m.get("decoder_max_tokens", {}).get(programs.backend)
        self.max_decoder_frames: int | None = m.get("decoder_max_frames", {}).get(programs.backend)
        #: the encoders take batch 1 only (ExecuTorch): loop over rows
        self.single_batch_encoders = programs.backend == "executorch"
        for name in preload:
            programs.load(name)

    @property
    def backend(self) -> str:
        return self.programs.backend

    # ---- encoders ---------------------------------------------------------------------------
    def encode(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Full context: x (N, T, F), x_lens (N,) -> (N, T', D), (N,), CTC log-probs (N, T', V)."""
        x_lens = x_lens.to(torch.int64)
        if not self.single_batch_encoders:
            enc, lens, lp = self.programs.run(
                "encoder", [_pad_time(x.float(), encoder_input_frames(x.shape[1])), x_lens]
            )
            return enc, lens, lp
        rows = []
        for i in range(x.shape[0]):
            t = int(x_lens[i])
            t_in = encoder_input_frames(t)
            if self.max_encoder_frames is not None and t_in > self.max_encoder_frames:
                raise AsrqError(
                    f"utterance of {t} fbank frames is longer than the ExecuTorch full-context encoder's "
                    f"{self.max_encoder_frames} ({self.max_encoder_frames / 100:.0f} s); use streaming decoding "
                    "or re-export with a larger --max-seconds"
                )
            rows.append(
                self.programs.run(
                    "encoder", [_pad_time(x[i : i + 1, :t].float(), t_in), x_lens[i : i + 1]]
                )
            )
        t_out = max((r[0].shape[1] for r in rows), default=0)
        d = rows[0][0].shape[-1] if rows else 0
        enc = torch.zeros(len(rows), t_out, d)
        lp = torch.zeros(len(rows), t_out, self.vocab_size)
        for i, (e, _, p) in enumerate(rows):
            enc[i, : e.shape[1]] = e[0]
            lp[i, : p.shape[1]] = p[0]
        lens = torch.cat([r[1] for r in rows]) if rows else torch.zeros(0, dtype=torch.int64)
        return enc, lens, lp

    def init_states(self, batch_size: int) -> list[Tensor]:
        """Zeros of the encoder's streaming states (from the metadata) for ``batch_size``."""
        out = []
        for s in self.states:
            shape = list(s.shape)
            shape[s.batch_axis] = batch_size
            out.append(torch.zeros(shape, dtype=s.dtype))
        return out

    def encode_chunk(
        self, x: Tensor, x_lens: Tensor, states: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """x (N, 4C + 3, F), x_lens (N,) -> (N, C, D), valid frames (N,), CTC log-probs (N, C, V), states."""
        x, x_lens = x.float(), x_lens.to(torch.int64)
        n = x.shape[0]
        if not self.single_batch_encoders or n == 1:
            e, lens, lp, *new = self.programs.run("encoder_streaming", [x, x_lens, *states])
            return e, lens, lp, new
        axes = [s.batch_axis for s in self.states]
        outs = [
            self.programs.run(
                "encoder_streaming",
                [
                    x[i : i + 1],
                    x_lens[i : i + 1],
                    *(t.narrow(a, i, 1) for t, a in zip(states, axes, strict=True)),
                ],
            )
            for i in range(n)
        ]
        e, lens, lp = (torch.cat([o[k] for o in outs]) for k in (0, 1, 2))
        new = [torch.cat([o[3 + k] for o in outs], dim=a) for k, a in enumerate(axes)]
        return e, lens, lp, new

    # ---- decoder ----------------------------------------------------------------------------
    def decoder_log_probs(
        self, enc: Tensor, enc_lens: Tensor, hyps_in: Tensor, hyps_lens: Tensor
    ) -> Tensor:
        """enc (B, T', D), enc_lens (B,), hyps_in (B, U), hyps_lens (B,) -> (B, U, V); a batch
        above the program's planned maximum runs in pieces."""
        b, t = enc.shape[0], enc.shape[1]
        u = hyps_in.shape[1]
        if self.max_decoder_tokens is not None and u > self.max_decoder_tokens:
            raise AsrqError(
                f"hypothesis of {u - 1} tokens: the {self.backend} decoder takes at most {self.max_decoder_tokens - 1}"
            )
        if self.max_decoder_frames is not None and t > self.max_decoder_frames:
            raise AsrqError(
                f"{t} encoder frames: the {self.backend} decoder takes at most {self.max_decoder_frames} "
                f"({self.max_decoder_frames * 0.04:.0f} s); re-export with a larger --max-seconds"
            )
        inputs = [
            enc.float(),
            enc_lens.to(torch.int64),
            hyps_in.to(torch.int64),
            hyps_lens.to(torch.int64),
        ]
        cap = self.programs.max_batch("decoder")
        if cap is None or b <= cap:
            return self.programs.run("decoder", inputs)[0]
        return torch.cat(
            [
                self.programs.run("decoder", [v[s : s + cap] for v in inputs])[0]
                for s in range(0, b, cap)
            ]
        )


def load_ctc_attention(
    model_dir: str | Path, backend: str, threads: int = 1, preload: Sequence[str] = ()
) -> ExportedCtcAttention:
    """An :class:`ExportedCtcAttention` for ``model_dir`` on ``backend``; checks it was exported."""
    if backend not in BACKENDS:
        raise AsrqError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if threads < 1:
        raise AsrqError(f"threads must be >= 1 (got {threads})")
    meta = read_metadata(model_dir)
    if backend not in meta.get("programs", {}):
        have = sorted(meta.get("programs", {}))
        raise AsrqError(
            f"{model_dir}: no {backend} programs in this export (it has {have}); re-export with --{backend}"
        )
    programs = (
        OnnxPrograms(model_dir, threads)
        if backend == "onnx"
        else ExecutorchPrograms(model_dir, threads)
    )
    return ExportedCtcAttention(programs, meta, preload)


# --------------------------------------------------------------------------------------------
# transcribe / bench
# --------------------------------------------------------------------------------------------
def check_method(method: str) -> str:
    """The search a transcribe ``method`` names on this head (``greedy`` -> ``ctc_greedy``)."""
    if method not in METHODS:
        raise AsrqError(
            f"method {method}: not for a ctc_attention model; choose one of {list(METHODS)}"
        )
    return "ctc_greedy" if method == "greedy" else method


def decode_features(
    comp: CA.CtcAttentionComponents, feats: Tensor, streaming: bool = False, method: str = "greedy", beam: int = 4,
    ctc_weight: float = 0.5,
) -> list[int]:  # fmt: skip
    """Tokens of one utterance's fbank ``(T, F)`` (full context, or chunk by chunk)."""
    lens = torch.tensor([feats.shape[0]], dtype=torch.int64)
    return CA.decode_batch(
        comp, feats[None], lens, check_method(method), streaming, beam, ctc_weight
    )[0]  # type: ignore[arg-type]


def iter_transcripts(
    model_dir: str | Path, paths: Sequence[str | Path], backend: str = "onnx", streaming: bool = False,
    method: str = "greedy", threads: int = 1, beam: int = 4,
) -> Iterator[tuple[str, str]]:  # fmt: skip
    """:func:`asrq.runtime.transcribe.iter_transcripts` for a ctc_attention export; the
    rescoring weight is the exported config's ``decode.ctc_weight``."""
    from asrq.runtime.audio import load_features
    from asrq.runtime.transcribe import load_tokenizer

    search = check_method(method)
    meta = read_metadata(model_dir)
    ctc_weight = float(meta.get("config", {}).get("decode", {}).get("ctc_weight", 0.5))
    sp = load_tokenizer(model_dir)
    preload = ("encoder_streaming",) if streaming else ("encoder",)
    if search == "attention_rescoring":
        preload = (*preload, "decoder")
    comp = load_ctc_attention(model_dir, backend, threads, preload=preload)
    for p in paths:
        tokens = decode_features(comp, load_features(p), streaming, search, beam, ctc_weight)
        yield str(p), sp.decode([int(t) for t in tokens if int(t) != comp.sos_id])


def load_streaming_ctc_greedy(
    model_dir: str | Path, backend: str, threads: int
) -> tuple[
    Any, Callable[[], CA.CtcGreedyState], Callable[[Tensor, Tensor, CA.CtcGreedyState], None]
]:
    """What ``asrq bench`` times per chunk on this head: the streaming encoder + CTC head, then
    online CTC greedy. Returns (components whose ``encode_chunk`` gives ``(log_probs, valid,
    states)``, a new-search factory, ``advance(log_probs, valid, search)``)."""
    comp = _StreamingCtc(
        load_ctc_attention(model_dir, backend, threads, preload=("encoder_streaming",))
    )
    return (
        comp,
        lambda: CA.CtcGreedyState(1, comp.blank_id),
        lambda lp, valid, s: s.advance(lp, valid) and None,
    )


class _StreamingCtc:
    """The streaming view ``asrq bench`` drives: ``encode_chunk`` -> (CTC log-probs, valid, states)."""

    def __init__(self, comp: ExportedCtcAttention) -> None:
        self.comp = comp
        self.meta = comp.meta
        self.chunk_frames = comp.chunk_frames
        self.blank_id = comp.blank_id

    def init_states(self, batch_size: int) -> list[Tensor]:
        return self.comp.init_states(batch_size)

    def encode_chunk(
        self, x: Tensor, x_lens: Tensor, states: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        _, valid, lp, states = self.comp.encode_chunk(x, x_lens, states)
        return lp, valid, states
