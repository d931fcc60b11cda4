"""The shared base of every head's exported runtime: :class:`ExportedPrograms` loads a model
directory's programs on one backend and runs its encoders (full context and streaming, with
the batching rules of the backend) and any dynamic-batch program.

The head subclasses (:class:`asrq.runtime.rnnt.ExportedRnnt`,
:class:`asrq.runtime.ctc_attention.ExportedCtcAttention`) add their own programs and the
decoding interface their searches expect; :mod:`asrq.runtime.heads` picks one by the export's
``head``. No torch model is built here: torch is only the tensor container; the programs run in
onnxruntime or the ExecuTorch runtime (:mod:`asrq.runtime.backends`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from torch import Tensor

from asrq.runtime.backends import ProgramRunner, get_backend, open_programs
from asrq.runtime.model_dir import (
    LOG_EPSILON,
    ModelDir,
    encoder_input_frames,
    read_model_dir,
    streaming_states,
)
from asrq.utils.io import AsrqError


def pad_time(x: Tensor, t: int) -> Tensor:
    """Pad (N, T, F) on the time axis to ``t`` frames with :data:`LOG_EPSILON`."""
    if x.shape[1] >= t:
        return x[:, :t].contiguous()
    pad = torch.full((x.shape[0], t - x.shape[1], x.shape[2]), LOG_EPSILON, dtype=x.dtype)
    return torch.cat([x, pad], dim=1)


class ExportedPrograms:
    """Exported programs of one model directory on one backend (see the module doc).

    Args:
        programs: a program runner (:func:`asrq.runtime.backends.open_programs`).
        meta: the export's metadata.
        preload: program names to load now (the rest load on first use).

    Subclasses declare :attr:`model_keys` (entries of ``metadata["model"]`` they need, checked
    here) and :attr:`encoder_outputs` (outputs of the encoders before the streaming states).
    """

    #: ``metadata["model"]`` entries this head needs (a foreign export fails clearly)
    model_keys: ClassVar[tuple[str, ...]] = ("vocab_size", "blank_id", "chunk_frames")
    #: outputs of ``encoder`` / ``encoder_streaming`` before the streaming states
    encoder_outputs: ClassVar[int] = 2

    def __init__(
        self, programs: ProgramRunner, meta: dict[str, Any], preload: Sequence[str] = ()
    ) -> None:
        m = meta["model"]
        missing = [k for k in self.model_keys if k not in m]
        if missing:
            raise AsrqError(
                f"{programs.model_dir}: the export's metadata has no model.{missing[0]}; it is not "
                f"a {type(self).__name__} export (head {meta.get('head')!r})"
            )
        self.programs = programs
        self.meta = meta
        self.vocab_size = int(m["vocab_size"])
        self.blank_id = int(m["blank_id"])
        self.chunk_frames = int(m["chunk_frames"])
        self.left_frames = int(m["left_frames"])
        self.feature_dim = int(m["feature_dim"])
        self.states = streaming_states(meta)  # batch 1
        ex = meta.get("programs", {}).get(programs.backend, {})
        self.max_encoder_frames: int | None = ex.get("encoder", {}).get("max_fbank_frames")
        #: the encoders take batch 1 only (ExecuTorch): loop over rows
        self.single_batch_encoders = not get_backend(programs.backend).batched_encoders
        for name in preload:
            programs.load(name)

    @classmethod
    def open(
        cls,
        model_dir: str | Path | ModelDir,
        backend: str,
        threads: int = 1,
        preload: Sequence[str] = (),
    ) -> Self:
        """This head's runtime for ``model_dir`` on ``backend``; checks the backend was exported."""
        get_backend(backend)
        if threads < 1:
            raise AsrqError(f"threads must be >= 1 (got {threads})")
        md = read_model_dir(model_dir)
        md.check_backend(backend)
        return cls(open_programs(md.path, backend, threads), md.meta, preload)

    @property
    def backend(self) -> str:
        return self.programs.backend

    # ---- encoders ---------------------------------------------------------------------------
    def encode_outputs(self, x: Tensor, x_lens: Tensor) -> list[Tensor]:
        """The full-context ``encoder`` program on x (N, T, F), x_lens (N,): its outputs
        ``[(N, T', D), (N,), *(N, T', X)]`` (any length ``T``: padded to ``4k + 3``; on a
        single-batch backend row by row, the frame outputs zero-padded to the longest row)."""
        x_lens = x_lens.to(torch.int64)
        if not self.single_batch_encoders:
            return self.programs.run(
                "encoder", [pad_time(x.float(), encoder_input_frames(x.shape[1])), x_lens]
            )
        rows = []
        for i in range(x.shape[0]):
            t = int(x_lens[i])
            t_in = encoder_input_frames(t)
            if self.max_encoder_frames is not None and t_in > self.max_encoder_frames:
                raise AsrqError(
                    f"utterance of {t} fbank frames is longer than the ExecuTorch full-context "
                    f"encoder's {self.max_encoder_frames} ({self.max_encoder_frames / 100:.0f} s); "
                    "use streaming decoding or re-export with a larger --max-seconds"
                )
            row = pad_time(x[i : i + 1, :t].float(), t_in)
            rows.append(self.programs.run("encoder", [row, x_lens[i : i + 1]]))
        if not rows:
            return [torch.zeros(0, 0, 0), torch.zeros(0, dtype=torch.int64)] + [
                torch.zeros(0, 0, 0) for _ in range(self.encoder_outputs - 2)
            ]
        t_out = max(r[0].shape[1] for r in rows)
        outs = []
        for k in range(len(rows[0])):
            if k == 1:  # lengths
                outs.append(torch.cat([r[1] for r in rows]))
                continue
            frames = torch.zeros(len(rows), t_out, rows[0][k].shape[-1])
            for i, r in enumerate(rows):
                frames[i, : r[k].shape[1]] = r[k][0]
            outs.append(frames)
        return outs

    def init_states(self, batch_size: int) -> list[Tensor]:
        """Zeros of the encoder's streaming states (:attr:`states`, from the metadata) for
        ``batch_size``."""
        out = []
        for s in self.states:
            shape = list(s.shape)
            shape[s.batch_axis] = batch_size
            out.append(torch.zeros(shape, dtype=s.dtype))
        return out

    def encode_chunk_outputs(
        self, x: Tensor, x_lens: Tensor, states: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The ``encoder_streaming`` program on x (N, 4C + 3, F), x_lens (N,) and the states ->
        (its outputs before the states: ``[(N, C, D), valid (N,), ...]``, the new states). On a
        single-batch backend row by row, slicing the states on their batch axes."""
        x, x_lens = x.float(), x_lens.to(torch.int64)
        n, k = x.shape[0], self.encoder_outputs
        if not self.single_batch_encoders or n == 1:
            out = self.programs.run("encoder_streaming", [x, x_lens, *states])
            return out[:k], out[k:]
        axes = [s.batch_axis for s in self.states]
        rows = [
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
        outs = [torch.cat([r[j] for r in rows]) for j in range(k)]
        new = [torch.cat([r[k + j] for r in rows], dim=a) for j, a in enumerate(axes)]
        return outs, new

    # ---- dynamic-batch programs -------------------------------------------------------------
    def run_batched(self, name: str, inputs: list[Tensor]) -> Tensor:
        """The first output of a dynamic-batch program, run in pieces if the batch exceeds the
        program's planned maximum."""
        n = inputs[0].shape[0]
        cap = self.programs.max_batch(name)
        if cap is None or n <= cap:
            return self.programs.run(name, inputs)[0]
        return torch.cat(
            [self.programs.run(name, [t[s : s + cap] for t in inputs])[0] for s in range(0, n, cap)]
        )
