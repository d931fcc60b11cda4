"""The runtime backends, one table keyed by backend name (:data:`BACKENDS`): how a program file
of that backend is named, loaded and run, and what its programs' shapes allow.

A program runner answers ``run(name, inputs) -> outputs`` (torch tensors in and out) over the
``<name><suffix>`` files of a model directory; :class:`OnnxPrograms` runs them in onnxruntime,
:class:`ExecutorchPrograms` in the ExecuTorch runtime (XNNPACK delegate). A new backend is a
new runner and a new :data:`BACKENDS` entry (and an exporter in
:data:`asrq.export.backends.EXPORTERS`).

Threads: onnxruntime takes ``intra_op_num_threads`` per session. ExecuTorch's XNNPACK delegate
runs on the runtime's global threadpool, resized with the pybindings'
``_unsafe_reset_threadpool(n)`` (experimental API; it is process-wide, so two runners in one
process share the last setting).

This module imports nothing heavy at import time (the CLI reads :data:`BACKENDS` for its
``--backend`` choices).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from asrq.utils.io import AsrqError

if TYPE_CHECKING:
    from torch import Tensor


class ProgramRunner(Protocol):
    """The exported programs of one model directory on one backend."""

    backend: str
    model_dir: Path
    threads: int

    def load(self, name: str) -> Any:
        """Load program ``name`` now (it loads on first use otherwise)."""
        ...

    def max_batch(self, name: str) -> int | None:
        """Largest batch the program takes (None: any)."""
        ...

    def run(self, name: str, inputs: Sequence[Tensor]) -> list[Tensor]:
        """Run program ``name`` on ``inputs`` -> its outputs."""
        ...


@dataclass(frozen=True)
class Backend:
    """One runtime backend: file suffix, runner, and the shape rules its exports follow."""

    name: str
    #: program file suffix (``encoder.onnx``)
    suffix: str
    #: ``runner(model_dir, threads)`` -> a :class:`ProgramRunner`
    runner: Callable[[Path, int], ProgramRunner]
    #: imports the runtime library (``asrq bench`` times it apart from loading the model)
    import_library: Callable[[], Any]
    #: the encoders take any batch (else batch 1: runtimes loop over rows)
    batched_encoders: bool
    #: memory-planned programs: every dynamic axis needs an upper bound
    bounded_shapes: bool
    #: the backend's name in benchmark records (ExecuTorch's ``benchmarkModel.backend``)
    bench_name: str = ""

    def program_path(self, model_dir: str | Path, name: str) -> Path:
        return Path(model_dir) / f"{name}{self.suffix}"


def program_path(model_dir: str | Path, name: str, backend: str) -> Path:
    """``<model_dir>/<name><suffix of backend>``."""
    return get_backend(backend).program_path(model_dir, name)


# --------------------------------------------------------------------------------------------
# onnxruntime
# --------------------------------------------------------------------------------------------
def _import_onnxruntime() -> Any:
    import onnxruntime

    return onnxruntime


class OnnxPrograms:
    """onnxruntime sessions over ``<dir>/<name>.onnx``, created on first use (or by
    :meth:`load`)."""

    backend = "onnx"

    def __init__(self, model_dir: str | Path, threads: int = 1) -> None:
        self.model_dir = Path(model_dir)
        self.threads = int(threads)
        self._ort = _import_onnxruntime()
        self._sessions: dict[str, Any] = {}

    def load(self, name: str) -> Any:
        if name not in self._sessions:
            path = program_path(self.model_dir, name, self.backend)
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
        import numpy as np
        import torch

        sess = self.load(name)
        feeds = {
            i.name: t.detach().cpu().contiguous().numpy()
            for i, t in zip(sess.get_inputs(), inputs, strict=True)
        }
        return [torch.from_numpy(np.asarray(o)) for o in sess.run(None, feeds)]


# --------------------------------------------------------------------------------------------
# ExecuTorch
# --------------------------------------------------------------------------------------------
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


def register_quantized_kernels() -> bool:
    """Register ExecuTorch's quantized kernels (``quantized_decomposed::*`` ops run outside a
    delegate) with the runtime; False when it is not installed or already registered."""
    import sys

    if "executorch.kernels.quantized" in sys.modules:
        return False
    try:
        import executorch.kernels.quantized  # noqa: F401
    except ImportError:
        return False
    return True


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
            return ext._load_program(
                str(path),
                enable_etdump=False,
                debug_buffer_size=0,
                program_verification=ext.Verification.InternalConsistency,
                data_path=None,
            )
        except (AttributeError, TypeError):  # the private signature moved: use the public wrapper
            from executorch.runtime import Runtime

            return Runtime.get().load_program(path)._program

    def load(self, name: str) -> Any:
        if name not in self._methods:
            path = program_path(self.model_dir, name, self.backend)
            if not path.is_file():
                raise AsrqError(f"{path}: ExecuTorch program not found (export with --executorch)")
            try:
                program = self._load_program(path)
                try:
                    self._methods[name] = program.load_method("forward")
                except RuntimeError:
                    # a quantized program with quantize / dequantize ops outside the XNNPACK
                    # delegate needs the quantized kernels registered (not loaded by default:
                    # ~2 s); then load it again
                    if not register_quantized_kernels():
                        raise
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


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------
#: Every runtime backend by name, in the order exports write them.
BACKENDS: dict[str, Backend] = {
    "onnx": Backend(
        "onnx",
        ".onnx",
        OnnxPrograms,
        _import_onnxruntime,
        batched_encoders=True,
        bounded_shapes=False,
    ),
    "executorch": Backend(
        "executorch",
        ".pte",
        ExecutorchPrograms,
        executorch_extension,
        # edge lowering specialised a dynamic encoder batch to its example size, and a static
        # batch lets XNNPACK take the reshapes
        batched_encoders=False,
        bounded_shapes=True,
        bench_name="executorch-xnnpack",
    ),
}


def get_backend(name: str) -> Backend:
    """The :data:`BACKENDS` entry ``name``; a clear error for an unknown one."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise AsrqError(f"unknown backend {name!r}; choose one of {list(BACKENDS)}") from None


def open_programs(model_dir: str | Path, backend: str, threads: int = 1) -> ProgramRunner:
    """The program runner of ``backend`` over ``model_dir`` (programs load on first use)."""
    if threads < 1:
        raise AsrqError(f"threads must be >= 1 (got {threads})")
    return get_backend(backend).runner(Path(model_dir), threads)
