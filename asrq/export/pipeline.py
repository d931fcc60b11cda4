"""``asrq export``: a checkpoint -> a deployable model directory.

Stages (each returns an artifact a test can check)::

    load_model -> program_specs -> export_onnx / export_executorch (per program)
               -> parity (each runtime vs eager) -> metadata.json, bpe.model, tokens.txt
               -> rename the staging directory into place

Everything is written into a hidden staging directory beside ``out_dir`` and renamed into place
only once parity has passed, so an interrupted or failed export never leaves a half-written
model directory. Layout::

    <out_dir>/encoder.onnx  encoder_streaming.onnx  predictor.onnx  joiner.onnx
              encoder.pte   encoder_streaming.pte   predictor.pte   joiner.pte
              metadata.json bpe.model tokens.txt
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asrq import __version__
from asrq.config import to_dict
from asrq.export import parity as P
from asrq.export.wrappers import DEFAULT_MAX_ENCODER_STEPS, program_specs, streaming_geometry
from asrq.runtime.backends import BACKENDS, LOG_EPSILON, METADATA, PROGRAMS, program_path
from asrq.utils.io import AsrqError, atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

FORMAT = "asrq-export-v1"
SUBSAMPLING = 4
FEATURE = {
    "type": "fbank",
    "extractor": "lhotse.Fbank(FbankConfig(num_mel_bins=80))",
    "num_mel_bins": 80,
    "sampling_rate": 16000,
    "frame_shift_ms": 10.0,
    "frame_length_ms": 25.0,
    "padding_value": LOG_EPSILON,
}


@dataclass
class ExportResult:
    out_dir: Path
    metadata: dict[str, Any]
    parity: P.ParityReport


def version_info() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "onnx", "onnxruntime", "onnxscript", "executorch", "lhotse"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def base_metadata(
    loaded: Any, chunk_frames: int, left_frames: int, name: str, checkpoint: str | None
) -> dict[str, Any]:
    """What every exported file carries: the resolved config and the numbers a runtime needs."""
    model, cfg = loaded.model, loaded.config
    g = streaming_geometry(model, chunk_frames, left_frames)
    return {
        "format": FORMAT,
        "asrq_version": __version__,
        "name": name,
        "subnet": getattr(loaded, "subnet", None),
        "model_type": f"{cfg.model.encoder.type}_rnnt",
        "checkpoint": checkpoint,
        "checkpoint_step": loaded.meta.get("step"),
        "model": {
            "vocab_size": int(model.vocab_size),
            "blank_id": int(model.blank_id),
            "context_size": int(model.predictor.context_size),
            "subsampling_factor": SUBSAMPLING,
            "chunk_frames": g.chunk_frames,
            "chunk_ms": g.chunk_frames * 10 * SUBSAMPLING,
            "left_frames": g.left_frames,
            "window_frames": g.window_frames,
            "feature_dim": g.feature_dim,
            "encoder_dim": g.d_model,
            "num_layers": g.num_layers,
            "joiner_dim": int(model.joiner.encoder_proj.out_features),
            "state_shapes": g.state_shapes(1),
            # the streaming encoder's states in input order (batch 1): runtimes read these
            "states": [s.to_json() for s in g.states],
            "num_parameters": sum(p.numel() for p in model.parameters()),
        },
        "feature": FEATURE,
        "config": to_dict(cfg),
    }


def onnx_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """The flat key set stored in every ONNX file's metadata_props."""
    m = meta["model"]
    return {
        "format": meta["format"],
        "asrq_version": meta["asrq_version"],
        "name": meta["name"],
        "subnet": meta["subnet"],
        "model_type": meta["model_type"],
        "checkpoint_step": meta["checkpoint_step"],
        "vocab_size": m["vocab_size"],
        "blank_id": m["blank_id"],
        "context_size": m["context_size"],
        "subsampling_factor": m["subsampling_factor"],
        "chunk_frames": m["chunk_frames"],
        "left_frames": m["left_frames"],
        "feature_dim": m["feature_dim"],
        "joiner_dim": m["joiner_dim"],
        "state_shapes": m["state_shapes"],
        "states": m["states"],
        "feature": meta["feature"],
        "config": meta["config"],
    }


def constant_methods(meta: dict[str, Any]) -> dict[str, int]:
    """Integer metadata stored in each ``.pte`` as constant methods (``program.vocab_size()``)."""
    m = meta["model"]
    keys = ("vocab_size", "blank_id", "context_size", "subsampling_factor", "chunk_frames", "left_frames",
            "feature_dim", "joiner_dim")  # fmt: skip
    return {k: int(m[k]) for k in keys}


def write_tokens(sp: Any, path: Path) -> None:
    """icefall's ``tokens.txt``: ``<piece> <id>`` per line."""
    atomic_write_text(
        path, "".join(f"{sp.id_to_piece(i)} {i}\n" for i in range(sp.get_piece_size()))
    )


def _runner(backend: str, model_dir: Path) -> tuple[Callable, Any]:
    from asrq.runtime.backends import ExecutorchPrograms, OnnxPrograms

    progs = (
        OnnxPrograms(model_dir, threads=1)
        if backend == "onnx"
        else ExecutorchPrograms(model_dir, threads=1)
    )
    return progs.run, progs


def _staging_dir(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.export-"))
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the model dir is not
    return staging


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / METADATA).is_file())
    ):
        raise AsrqError(
            f"{out_dir}: exists and is not an asrq model directory; choose another --out"
        )


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` (absent, empty, or a previous export) by ``staging``."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_model(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    onnx: bool | None = None,
    executorch: bool | None = None,
    chunk_frames: int | None = None,
    left_frames: int | None = None,
    max_seconds: float = DEFAULT_MAX_ENCODER_STEPS * 4 / 100,
    opset: int | None = None,
    name: str | None = None,
    tol: float = P.DEFAULT_TOL,
    log_fn: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a checkpoint (see the module doc). ``onnx`` / ``executorch`` / ``opset`` default to
    the checkpoint's ``export`` config, ``chunk_frames`` / ``left_frames`` to its
    ``model.streaming``. ``max_seconds`` bounds the ExecuTorch full-context encoder's input.
    Raises :class:`~asrq.export.parity.ParityError` when a program misses ``tol``."""
    from asrq.train.checkpoint import load_model

    loaded = load_model(checkpoint)
    return export_loaded(
        loaded, out_dir, checkpoint=str(checkpoint), onnx=onnx, executorch=executorch, chunk_frames=chunk_frames,
        left_frames=left_frames, max_seconds=max_seconds, opset=opset, name=name or Path(checkpoint).stem, tol=tol,
        log_fn=log_fn,
    )  # fmt: skip


def export_loaded(
    loaded: Any,
    out_dir: str | Path,
    *,
    checkpoint: str | None = None,
    onnx: bool | None = None,
    executorch: bool | None = None,
    chunk_frames: int | None = None,
    left_frames: int | None = None,
    max_seconds: float = DEFAULT_MAX_ENCODER_STEPS * 4 / 100,
    opset: int | None = None,
    name: str = "model",
    tol: float = P.DEFAULT_TOL,
    programs: Sequence[str] = PROGRAMS,
    log_fn: Callable[[str], None] | None = None,
) -> ExportResult:
    """:func:`export_model` for an already loaded model (``asrq.train.checkpoint.LoadedModel``:
    ``.model``, ``.config``, ``.sp``, ``.bpe_model_bytes``, ``.meta``)."""
    say = log_fn or log.info
    cfg = loaded.config
    out_dir = Path(out_dir)
    targets = [b for b, on in zip(BACKENDS, (cfg.export.onnx if onnx is None else onnx,
                                             cfg.export.executorch if executorch is None else executorch), strict=True) if on]  # fmt: skip
    if not targets:
        raise AsrqError("nothing to export: both --no-onnx and --no-executorch")
    chunk = cfg.model.streaming.chunk_frames if chunk_frames is None else chunk_frames
    left = cfg.model.streaming.left_frames if left_frames is None else left_frames
    if chunk < 1 or left < 0:
        raise AsrqError(f"--chunk-frames must be >= 1 and --left-frames >= 0 (got {chunk}, {left})")
    max_steps = int(round(max_seconds * 100)) // 4  # 30 s -> 750 encoder frames = 3003 fbank frames
    if max_steps < 2:
        raise AsrqError(f"--max-seconds {max_seconds} is too short")
    opset = opset or cfg.export.opset
    if (
        getattr(loaded.model, "head", "rnnt") == "ctc_attention"
    ):  # its own programs (``programs`` unused)
        from asrq.export.ctc_attention import export_ctc_attention

        return export_ctc_attention(loaded, out_dir, targets=targets, chunk_frames=chunk, left_frames=left, max_steps=max_steps,
                                    opset=opset, name=name, checkpoint=checkpoint, tol=tol, say=say)  # fmt: skip
    _check_out_dir(out_dir)
    model = loaded.model.eval()
    meta = base_metadata(loaded, chunk, left, name, checkpoint)
    meta["programs"] = {}
    report = P.ParityReport(tol)
    staging = _staging_dir(out_dir)
    try:
        for target in targets:
            specs = program_specs(model, chunk, left, target, max_encoder_steps=max_steps)
            entries: dict[str, Any] = {}
            for pname in programs:
                path = program_path(staging, pname, target)
                entries[pname] = _export_one(target, specs[pname], path, meta, opset)
                e = entries[pname]
                say(
                    f"{target:<10} {pname:<18} {e['bytes'] / 1e6:8.2f} MB  {e['export_seconds']:7.1f} s"
                )
            meta["programs"][target] = entries
            run, _ = _runner(target, staging)
            t0 = time.perf_counter()
            report.checks += P.check_parity(
                specs, run, target, meta["model"]["vocab_size"], target == "onnx", tol, programs
            )
            say(
                f"{target:<10} parity: max abs err {report.max_abs_err(target):.2e} ({time.perf_counter() - t0:.1f} s)"
            )
            del run  # release the runtime's sessions before the directory moves
        if not report.ok:
            raise P.ParityError(report)
        meta["parity"] = report.to_dict()
        meta["sizes"] = {t: {**{p: e["bytes"] for p, e in meta["programs"][t].items()},
                             "total": sum(e["bytes"] for e in meta["programs"][t].values())} for t in targets}  # fmt: skip
        meta["versions"] = version_info()
        meta["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        atomic_write_bytes(staging / "bpe.model", loaded.bpe_model_bytes)
        write_tokens(loaded.sp, staging / "tokens.txt")
        atomic_write_json(staging / METADATA, meta)
        _move_into_place(staging, out_dir)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
        raise
    return ExportResult(out_dir, meta, report)


def _export_one(
    target: str, spec: Any, path: Path, meta: dict[str, Any], opset: int
) -> dict[str, Any]:
    entry: dict[str, Any] = {"file": path.name, "inputs": spec.input_names, "outputs": spec.output_names,
                             "dynamic_axes": {k: {str(a): v for a, v in d.items()} for k, d in spec.dynamic_axes.items()}}  # fmt: skip
    if target == "onnx":
        from asrq.export.onnx_export import export_onnx

        art = export_onnx(spec, path, onnx_metadata(meta), opset)
        entry.update(bytes=art.bytes, export_seconds=round(art.seconds, 2), opset=art.opset)
    else:
        from asrq.export.executorch_export import export_executorch

        art = export_executorch(spec, path, constant_methods(meta))
        entry.update(
            bytes=art.bytes,
            export_seconds=round(art.seconds["total"], 2),
            stage_seconds={k: round(v, 2) for k, v in art.seconds.items()},
            delegate="xnnpack",
            dtype="fp32",
            xnnpack_partitions=art.delegates,
            portable_ops=art.portable_ops,
        )
        if art.max_fbank_frames is not None:
            entry["max_fbank_frames"] = art.max_fbank_frames
    return entry
