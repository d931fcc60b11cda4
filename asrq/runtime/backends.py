"""Exported RNN-T programs behind the :class:`~asrq.decode.interface.RnntComponents` interface.

A model directory written by ``asrq export`` holds ``metadata.json``, ``bpe.model``,
``tokens.txt`` and, per backend, four programs (see :mod:`asrq.export.wrappers`):
``encoder``, ``encoder_streaming``, ``predictor``, ``joiner`` as ``<name>.onnx`` (onnxruntime) or
``<name>.pte`` (ExecuTorch, XNNPACK delegate). No torch model is built here: torch is only the
tensor container of the interface; the programs run in onnxruntime or the ExecuTorch runtime.

Threads: onnxruntime takes ``intra_op_num_threads`` per session. ExecuTorch's XNNPACK delegate
runs on the runtime's global threadpool, resized with the pybindings'
``_unsafe_reset_threadpool(n)`` (experimental API; it is process-wide, so two
:class:`ExecutorchRnnt` in one process share the last setting).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from asrq.utils.io import AsrqError

#: Program names, in the order the export writes them.
PROGRAMS: tuple[str, ...] = ("encoder", "encoder_streaming", "predictor", "joiner")
SUFFIX = {"onnx": ".onnx", "executorch": ".pte"}
Backend = Literal["onnx", "executorch"]
BACKENDS: tuple[str, ...] = ("onnx", "executorch")
#: Smallest full-context encoder output the export supports (T' = 1 specialises the graph).
MIN_ENCODER_STEPS = 2
#: lhotse's padding value for log-mel features.
LOG_EPSILON = math.log(1e-10)
METADATA = "metadata.json"


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
    dtype: torch.dtype
    batch_axis: int


_STATE_DTYPES = {"float32": torch.float32, "int64": torch.int64}


def streaming_states(meta: dict[str, Any]) -> list[StreamingState]:
    """The streaming encoder's states, in input order, from ``meta["model"]["states"]`` (written
    by :meth:`asrq.models.states.StateSpec.to_json`). Exports made before the metadata named its
    states are Conformers: ``attn_cache``, ``conv_cache`` (batch axis 1) and ``processed`` (int64)."""
    m = meta["model"]
    if "states" in m:
        return [StreamingState(d["name"], tuple(d["shape"]), _STATE_DTYPES[d["dtype"]], int(d["batch_axis"]))
                for d in m["states"]]  # fmt: skip
    shapes = m["state_shapes"]
    return [
        StreamingState("attn_cache", tuple(shapes["attn_cache"]), torch.float32, 1),
        StreamingState("conv_cache", tuple(shapes["conv_cache"]), torch.float32, 1),
        StreamingState("processed", tuple(shapes["processed"]), torch.int64, 0),
    ]


def program_path(model_dir: str | Path, name: str, backend: str) -> Path:
    return Path(model_dir) / f"{name}{SUFFIX[backend]}"


# --------------------------------------------------------------------------------------------
# program runners: run(name, inputs) -> outputs, torch tensors in and out
# --------------------------------------------------------------------------------------------
class OnnxPrograms:
    """onnxruntime sessions over ``<dir>/<name>.onnx``, created on first use (or by :meth:`load`)."""

    backend = "onnx"

    def __init__(self, model_dir: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self.model_dir = Path(model_dir)
        self.threads = int(threads)
        self._ort = ort
        self._sessions: dict[str, Any] = {}

    def load(self, name: str) -> Any:
        if name not in self._sessions:
            path = program_path(self.model_dir, name, "onnx")
            if not path.is_file():
                raise AsrqError(f"{path}: ONNX program not found (export with --onnx)")
            so = self._ort.SessionOptions()
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
            so.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
            if self.threads > 1:
                # each session has its own pool; spinning workers of one session would steal the
                # cores from the next one (encoder, predictor and joiner alternate every frame)
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.log_severity_level = 3
            try:
                self._sessions[name] = self._ort.InferenceSession(
                    str(path), sess_options=so, providers=["CPUExecutionProvider"]
                )
            except Exception as e:  # onnxruntime raises its own exception types
                raise AsrqError(f"{path}: onnxruntime cannot load it ({e})") from e
        return self._sessions[name]

    def max_batch(self, name: str) -> int | None:
        return None

    def run(self, name: str, inputs: Sequence[Tensor]) -> list[Tensor]:
        sess = self.load(name)
        feeds = {
            i.name: t.detach().cpu().contiguous().numpy()
            for i, t in zip(sess.get_inputs(), inputs, strict=True)
        }
        return [torch.from_numpy(np.asarray(o)) for o in sess.run(None, feeds)]


class ExecutorchPrograms:
    """ExecuTorch methods ``forward`` of ``<dir>/<name>.pte``, loaded on first use.

    Uses the runtime's pybindings extension (``executorch.extension.pybindings._C``, the module
    ``executorch.runtime`` wraps) directly: importing ``executorch.runtime`` also imports the
    whole ahead-of-time compiler (``executorch.exir``: ~6 s and ~220 MB here), which a runtime
    does not need. Falls back to ``executorch.runtime.Runtime`` if the extension's calls change.
    """

    backend = "executorch"

    def __init__(self, model_dir: str | Path, threads: int = 1) -> None:
        self.model_dir = Path(model_dir)
        self.threads = int(threads)
        self._ext = executorch_extension()
        set_executorch_threads(self.threads)
        self._programs: dict[str, Any] = {}
        self._methods: dict[str, Any] = {}

    def _load_program(self, path: Path) -> Any:
        ext = self._ext
        try:
            return ext._load_program(str(path), enable_etdump=False, debug_buffer_size=0,
                                     program_verification=ext.Verification.InternalConsistency, data_path=None)  # fmt: skip
        except (AttributeError, TypeError):  # the private signature moved: use the public wrapper
            from executorch.runtime import Runtime

            return Runtime.get().load_program(path)._program

    def load(self, name: str) -> Any:
        if name not in self._methods:
            path = program_path(self.model_dir, name, "executorch")
            if not path.is_file():
                raise AsrqError(f"{path}: ExecuTorch program not found (export with --executorch)")
            try:
                program = self._load_program(path)
                self._methods[name] = program.load_method("forward")
            except RuntimeError as e:  # the runtime reports load errors with codes
                raise AsrqError(f"{path}: the ExecuTorch runtime cannot load it ({e})") from e
            self._programs[name] = program
        return self._methods[name]

    def max_batch(self, name: str) -> int | None:
        """Largest batch the program's memory plan holds (the first input's planned size)."""
        return int(self.load(name).method_meta().input_tensor_meta(0).sizes()[0])

    def run(self, name: str, inputs: Sequence[Tensor]) -> list[Tensor]:
        method = self.load(name)
        return list(method([t.detach().cpu().contiguous() for t in inputs]))


def executorch_extension() -> Any:
    """The ExecuTorch runtime extension module (``_load_program``, threadpool control)."""
    import torch  # noqa: F401  (the extension links against libtorch: load it first)

    try:
        from executorch.extension.pybindings import _C
    except ImportError as e:
        raise AsrqError(
            f"the ExecuTorch runtime is not available ({e}); pip install executorch"
        ) from e
    return _C


def set_executorch_threads(threads: int) -> int:
    """Resize ExecuTorch's global threadpool (XNNPACK's workers); returns the resulting count."""
    ext = executorch_extension()
    ext._unsafe_reset_threadpool(int(threads))
    return int(ext._threadpool_get_thread_count())


# --------------------------------------------------------------------------------------------
# RnntComponents over exported programs
# --------------------------------------------------------------------------------------------
class ExportedRnnt:
    """:class:`~asrq.decode.interface.RnntComponents` over a program runner and ``metadata.json``.

    Args:
        programs: :class:`OnnxPrograms` or :class:`ExecutorchPrograms`.
        meta: the export's metadata (vocab, blank, context size, chunk, state shapes).
        preload: program names to load now (the rest load on first use).
    """

    def __init__(
        self,
        programs: OnnxPrograms | ExecutorchPrograms,
        meta: dict[str, Any],
        preload: Sequence[str] = (),
    ) -> None:
        self.programs = programs
        self.meta = meta
        m = meta["model"]
        self.vocab_size = int(m["vocab_size"])
        self.blank_id = int(m["blank_id"])
        self.context_size = int(m["context_size"])
        self.chunk_frames = int(m["chunk_frames"])
        self.left_frames = int(m["left_frames"])
        self.feature_dim = int(m["feature_dim"])
        self.states = streaming_states(meta)  # batch 1
        ex = meta.get("programs", {}).get(programs.backend, {})
        self.max_encoder_frames: int | None = ex.get("encoder", {}).get("max_fbank_frames")
        #: the encoders take batch 1 only (ExecuTorch): loop over rows
        self.single_batch_encoders = programs.backend == "executorch"
        for name in preload:
            programs.load(name)

    @property
    def backend(self) -> str:
        return self.programs.backend

    # ---- encoders ---------------------------------------------------------------------------
    def encode(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Full context: x (N, T, F), x_lens (N,) -> (N, T', J), (N,)."""
        x_lens = x_lens.to(torch.int64)
        if not self.single_batch_encoders:
            return tuple(
                self.programs.run(
                    "encoder", [_pad_time(x.float(), encoder_input_frames(x.shape[1])), x_lens]
                )
            )
        outs, lens = [], []
        for i in range(x.shape[0]):
            t = int(x_lens[i])
            t_in = encoder_input_frames(t)
            if self.max_encoder_frames is not None and t_in > self.max_encoder_frames:
                raise AsrqError(
                    f"utterance of {t} fbank frames is longer than the ExecuTorch full-context encoder's "
                    f"{self.max_encoder_frames} ({self.max_encoder_frames / 100:.0f} s); use streaming decoding "
                    "or re-export with a larger --max-seconds"
                )
            row = _pad_time(x[i : i + 1, :t].float(), t_in)
            e, n = self.programs.run("encoder", [row, x_lens[i : i + 1]])
            outs.append(e[0])
            lens.append(n)
        t_out = max((o.shape[0] for o in outs), default=0)
        enc = torch.zeros(len(outs), t_out, outs[0].shape[-1] if outs else 0)
        for i, o in enumerate(outs):
            enc[i, : o.shape[0]] = o
        return enc, torch.cat(lens) if lens else torch.zeros(0, dtype=torch.int64)

    def init_states(self, batch_size: int) -> list[Tensor]:
        """Zeros of the encoder's streaming states (:attr:`states`, from the metadata) for ``batch_size``."""
        out = []
        for s in self.states:
            shape = list(s.shape)
            shape[s.batch_axis] = batch_size
            out.append(torch.zeros(shape, dtype=s.dtype))
        return out

    def encode_chunk(
        self, x: Tensor, x_lens: Tensor, states: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """x (N, 4C + 3, F), x_lens (N,) -> (N, C, J), valid frames (N,), new states."""
        x, x_lens = x.float(), x_lens.to(torch.int64)
        n = x.shape[0]
        if not self.single_batch_encoders or n == 1:
            e, lens, *new = self.programs.run("encoder_streaming", [x, x_lens, *states])
            return e, lens, new
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
        e, lens = (torch.cat([o[k] for o in outs]) for k in (0, 1))
        new = [torch.cat([o[2 + k] for o in outs], dim=a) for k, a in enumerate(axes)]
        return e, lens, new

    # ---- predictor / joiner -----------------------------------------------------------------
    def predict(self, context: Tensor) -> Tensor:
        """(N, context_size) int64 (-1 = padding) -> (N, J)."""
        return self._batched("predictor", [context.to(torch.int64)])

    def join(self, enc: Tensor, pred: Tensor) -> Tensor:
        """(N, J), (N, J) -> logits (N, V)."""
        return self._batched("joiner", [enc.float(), pred.float()])

    def _batched(self, name: str, inputs: list[Tensor]) -> Tensor:
        """Run a dynamic-batch program, in pieces if the batch exceeds its planned maximum."""
        n = inputs[0].shape[0]
        cap = self.programs.max_batch(name)
        if cap is None or n <= cap:
            return self.programs.run(name, inputs)[0]
        return torch.cat(
            [self.programs.run(name, [t[s : s + cap] for t in inputs])[0] for s in range(0, n, cap)]
        )


def _pad_time(x: Tensor, t: int) -> Tensor:
    """Pad (N, T, F) on the time axis to ``t`` frames with :data:`LOG_EPSILON`."""
    if x.shape[1] >= t:
        return x[:, :t].contiguous()
    pad = torch.full((x.shape[0], t - x.shape[1], x.shape[2]), LOG_EPSILON, dtype=x.dtype)
    return torch.cat([x, pad], dim=1)


class OnnxRnnt(ExportedRnnt):
    """The exported model run by onnxruntime (``threads`` intra-op threads per session)."""

    def __init__(
        self, model_dir: str | Path, threads: int = 1, preload: Sequence[str] = ()
    ) -> None:
        super().__init__(OnnxPrograms(model_dir, threads), read_metadata(model_dir), preload)


class ExecutorchRnnt(ExportedRnnt):
    """The exported model run by the ExecuTorch runtime (XNNPACK; ``threads`` pool workers)."""

    def __init__(
        self, model_dir: str | Path, threads: int = 1, preload: Sequence[str] = ()
    ) -> None:
        super().__init__(ExecutorchPrograms(model_dir, threads), read_metadata(model_dir), preload)


def load_rnnt(
    model_dir: str | Path, backend: str, threads: int = 1, preload: Sequence[str] = ()
) -> ExportedRnnt:
    """An :class:`OnnxRnnt` or :class:`ExecutorchRnnt` for ``model_dir``; checks the backend was exported."""
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
    cls = OnnxRnnt if backend == "onnx" else ExecutorchRnnt
    return cls(model_dir, threads, preload)
