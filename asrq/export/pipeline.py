"""``asrq export``: a checkpoint -> a deployable model directory, for any head (one driver).

Stages (each returns an artifact a test can check)::

    load_model -> head.program_specs -> the backend's exporter (per program)
               -> parity (each runtime vs eager: shared encoder cases + head.parity_cases)
               -> metadata.json, bpe.model, tokens.txt
               -> rename the staging directory into place

The head (:data:`asrq.export.heads.EXPORT_HEADS`, picked by the model's ``head``) gives the
programs, specs, its metadata entries and parity cases; the backend tables give the exporter
(:data:`asrq.export.backends.EXPORTERS`) and the runtime that checks it
(:data:`asrq.runtime.backends.BACKENDS`). Everything is written into a hidden staging directory
beside ``out_dir`` and renamed into place only once parity has passed, so an interrupted or failed
export never leaves a half-written model directory. Layout (RNN-T; see the head modules)::

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
from asrq.export.backends import FileMetadata, get_exporter
from asrq.export.heads import ExportHead, export_head
from asrq.export.spec import DEFAULT_MAX_ENCODER_STEPS, ProgramSpec, streaming_geometry
from asrq.runtime.backends import BACKENDS, open_programs, program_path
from asrq.runtime.model_dir import BPE_MODEL, FEATURE, FORMAT, METADATA, SUBSAMPLING, TOKENS
from asrq.utils.io import AsrqError, atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

#: Top-level metadata entries every exported file carries (beside the head's ``file_keys``).
FILE_TOP_KEYS = (
    "format",
    "asrq_version",
    "name",
    "subnet",
    "head",
    "model_type",
    "checkpoint_step",
    "feature",
    "config",
)


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
    loaded: Any,
    chunk_frames: int,
    left_frames: int,
    name: str,
    checkpoint: str | None,
    max_encoder_steps: int = DEFAULT_MAX_ENCODER_STEPS,
) -> dict[str, Any]:
    """What every export's ``metadata.json`` holds before programs, parity and sizes: the
    resolved config, the head, and the numbers a runtime needs (shared + the head's own)."""
    model = loaded.model
    head_name, head = export_head(model)
    g = streaming_geometry(model, chunk_frames, left_frames)
    return {
        "format": FORMAT,
        "asrq_version": __version__,
        "name": name,
        "subnet": getattr(loaded, "subnet", None),
        "head": head_name,
        "model_type": f"{model.encoder.cfg.type}_{head_name}",
        "checkpoint": checkpoint,
        "checkpoint_step": loaded.meta.get("step"),
        "model": {
            "vocab_size": int(model.vocab_size),
            "blank_id": int(model.blank_id),
            "subsampling_factor": SUBSAMPLING,
            "chunk_frames": g.chunk_frames,
            "chunk_ms": g.chunk_frames * 10 * SUBSAMPLING,
            "left_frames": g.left_frames,
            "window_frames": g.window_frames,
            "feature_dim": g.feature_dim,
            "num_layers": g.num_layers,
            # the streaming encoder's states in input order (batch 1): runtimes read these
            "states": [s.to_json() for s in g.states],
            "num_parameters": sum(p.numel() for p in model.parameters()),
            **head.model_metadata(model, g, max_encoder_steps),
        },
        "feature": FEATURE,
        "config": to_dict(loaded.config),
    }


def file_metadata(meta: dict[str, Any], head: ExportHead) -> FileMetadata:
    """What each exported file carries: the flat key set of ONNX ``metadata_props`` and the
    integer constants of ``.pte`` constant methods."""
    m = meta["model"]
    props = {**{k: meta[k] for k in FILE_TOP_KEYS}, **{k: m[k] for k in head.file_keys}}
    return FileMetadata(props, {k: int(m[k]) for k in head.constant_keys})


def write_tokens(sp: Any, path: Path) -> None:
    """icefall's ``tokens.txt``: ``<piece> <id>`` per line."""
    atomic_write_text(
        path, "".join(f"{sp.id_to_piece(i)} {i}\n" for i in range(sp.get_piece_size()))
    )


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


def load_for_export(checkpoint: str | Path) -> Any:
    """A checkpoint's ``LoadedModel``: a QAT checkpoint (its config has a ``qat`` section) as
    its fake-quantized model with the learned step sizes, any other as its float model."""
    from asrq.train.checkpoint import load_checkpoint, load_model

    if load_checkpoint(checkpoint).get("config", {}).get("qat") is not None:
        from asrq.quant.train import load_qat_model

        return load_qat_model(checkpoint)
    return load_model(checkpoint)


def export_model(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    quant: str | None = None,
    calib_cuts: str | Path | None = None,
    calib_utts: int = 32,
    onnx_float_outputs: bool = False,
    **options: Any,
) -> ExportResult:
    """Export a checkpoint (see the module doc): :func:`export_loaded` on the loaded model, with
    its keyword ``options`` (``onnx``, ``executorch``, ``chunk_frames``, ``left_frames``,
    ``max_seconds``, ``opset``, ``tol``, ``programs``, ``sherpa``, ``log_fn``). ``name`` defaults to
    the checkpoint's file stem. ``quant``: a scheme of :data:`asrq.export.quant.QUANT_SCHEMES`
    (``int8`` from an fp32 checkpoint calibrates on ``calib_cuts``, default the config's dev
    cuts; ``calib_utts`` utterances; ``onnx_float_outputs``: see
    :meth:`asrq.export.quant.QuantPlan.float_linear_outputs`). Without ``quant`` a QAT
    checkpoint exports its weights as float. Raises :class:`~asrq.export.parity.ParityError`
    when a program misses its bound."""
    loaded = load_for_export(checkpoint)
    name = name or Path(checkpoint).stem
    plan = None
    if quant is not None:
        from asrq.export.quant import quant_plan

        if calib_cuts is None:
            d = loaded.config.data
            calib_cuts = Path(d.fbank_dir) / f"librispeech_cuts_{d.dev_split}.jsonl.gz"
        plan = quant_plan(quant, loaded, calib_cuts, calib_utts, onnx_float_outputs)
        plan.set_parity_speech(calib_cuts)
    else:
        if onnx_float_outputs:
            raise AsrqError("--onnx-float-outputs needs --quant int8")
        from asrq.export.quant import float_model

        loaded.model = float_model(loaded.model)
    return export_loaded(
        loaded, out_dir, checkpoint=str(checkpoint), name=name, quant=plan, **options
    )


def _quant_floor(
    model: Any, head: ExportHead, chunk: int, left: int, max_steps: int, speech: Any
) -> dict:
    """The quantized model's own noise floor (:mod:`asrq.quant.sensitivity`): its streaming
    encoder against itself on the first three speech windows scaled by ``1 + 1e-6 N(0, 1)``, the
    reference for the runtimes' SQNR (two correct int8 implementations differ that much)."""
    from asrq.quant.sensitivity import DEFAULT_REL, output_floor

    spec = head.program_specs(model, chunk, left, "executorch", max_steps)["encoder_streaming"]
    return {
        "rel": DEFAULT_REL,
        "encoder_streaming_sqnr_db": output_floor(spec, speech, DEFAULT_REL),
        "what": "the eager model against itself on 1e-6-perturbed inputs (3 seeds)",
    }


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
    programs: Sequence[str] | None = None,
    sherpa: bool = False,
    log_fn: Callable[[str], None] | None = None,
    quant: Any = None,
    min_sqnr: float | None = None,
) -> ExportResult:
    """Export an already loaded model (``asrq.train.checkpoint.LoadedModel``: ``.model``,
    ``.config``, ``.sp``, ``.bpe_model_bytes``, ``.meta``) into ``out_dir``.

    ``onnx`` / ``executorch`` / ``opset`` default to the checkpoint's ``export`` config,
    ``chunk_frames`` / ``left_frames`` to its ``model.streaming``; ``max_seconds`` bounds the
    full-context encoder's input on memory-planned backends (ExecuTorch); ``programs``: a subset
    of the head's programs to write and check (default: all); ``sherpa``: also write the
    sherpa-onnx streaming layout (:mod:`asrq.export.sherpa`) into ``sherpa/`` (fp32 only).
    ``quant``: a :class:`asrq.export.quant.QuantPlan`: its model is exported (and is the parity
    reference) with its scheme's writers, held to its SQNR bound. Raises
    :class:`~asrq.export.parity.ParityError` when a program misses ``tol`` (or the SQNR
    bound)."""
    say = log_fn or log.info
    cfg = loaded.config
    out_dir = Path(out_dir)
    # per backend: the argument, else the checkpoint's ``export.<backend>`` flag
    given = {"onnx": onnx, "executorch": executorch}
    targets = [
        b for b in BACKENDS if (getattr(cfg.export, b, False) if given.get(b) is None else given[b])
    ]
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
    _check_out_dir(out_dir)
    model = (loaded.model if quant is None else quant.model).eval()
    _, head = export_head(model)
    if sherpa:
        from asrq.export.sherpa import check_supported

        if quant is not None:
            raise AsrqError(
                "--sherpa writes the fp32 sherpa-onnx layout; export it without --quant"
            )
        check_supported(model)
    programs = tuple(programs or head.programs)
    meta = base_metadata(loaded, chunk, left, name, checkpoint, max_steps)
    if quant is not None:
        meta["quantization"] = quant.metadata
    files = file_metadata(meta, head)
    meta["programs"] = {}
    if quant is None:
        min_sqnr = None
    elif min_sqnr is None:
        min_sqnr = quant.min_sqnr
    speech = list(getattr(quant, "speech", ()) or ())
    report = P.ParityReport(tol, min_sqnr=min_sqnr)
    if speech:
        report.inputs = f"speech: {quant.speech_source}"
    staging = _staging_dir(out_dir)
    try:
        for target in targets:
            # a quantized plan may build a backend's programs from a variant of its model
            model_t = model if quant is None else quant.model_for(target)
            specs = head.program_specs(model_t, chunk, left, target, max_steps)
            writer = get_exporter(target) if quant is None else quant.exporter(target)
            meta["programs"][target] = {
                pname: _export_one(target, specs[pname], staging, files, opset, say, writer)
                for pname in programs
            }
            run = open_programs(staging, target, threads=1).run
            t0 = time.perf_counter()
            batched = BACKENDS[target].batched_encoders
            report.checks += P.check_encoders(
                specs, run, target, batched, tol, programs, min_sqnr, speech, 4 * max_steps
            )
            for pname, cases in head.parity_cases(model_t, specs, target).items():
                if pname in programs:
                    report.checks += P.check_program(
                        specs[pname], run, target, cases, tol, min_sqnr
                    )
            say(
                f"{target:<10} parity: max abs err {report.max_abs_err(target):.2e}, "
                f"min SQNR {report.min_sqnr_db(target):.1f} dB "
                f"({time.perf_counter() - t0:.1f} s)"
            )
            del run  # release the runtime's sessions before the directory moves
        if not report.ok:
            raise P.ParityError(report)
        if sherpa:
            from asrq.export.sherpa import export_sherpa

            if "onnx" not in targets:
                raise AsrqError("--sherpa needs the ONNX programs: drop --no-onnx")
            meta["sherpa"] = export_sherpa(model, loaded.sp, staging, chunk, left, opset)
            say(f"sherpa-onnx layout in {out_dir / 'sherpa'}")
        meta["parity"] = report.to_dict()
        if speech and "encoder_streaming" in programs:
            floor = _quant_floor(quant.model, head, chunk, left, max_steps, speech[0])
            meta["parity"]["floor"] = floor
        meta["sizes"] = {
            t: {
                **{p: e["bytes"] for p, e in entries.items()},
                "total": sum(e["bytes"] for e in entries.values()),
            }
            for t, entries in meta["programs"].items()
        }
        meta["versions"] = version_info()
        meta["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        atomic_write_bytes(staging / BPE_MODEL, loaded.bpe_model_bytes)
        write_tokens(loaded.sp, staging / TOKENS)
        atomic_write_json(staging / METADATA, meta)
        _move_into_place(staging, out_dir)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
        raise
    return ExportResult(out_dir, meta, report)


def _export_one(
    target: str,
    spec: ProgramSpec,
    staging: Path,
    files: FileMetadata,
    opset: int,
    say: Callable[[str], None],
    writer: Callable[..., dict[str, Any]],
) -> dict[str, Any]:
    """Write one program with ``writer`` (the backend's exporter, or a quantization scheme's)
    -> its ``metadata.json`` entry."""
    path = program_path(staging, spec.name, target)
    entry: dict[str, Any] = {
        "file": path.name,
        "inputs": spec.input_names,
        "outputs": spec.output_names,
        "dynamic_axes": {
            k: {str(a): v for a, v in d.items()} for k, d in spec.dynamic_axes.items()
        },
    }
    entry.update(writer(spec, path, files, opset))
    say(
        f"{target:<10} {spec.name:<18} {entry['bytes'] / 1e6:8.2f} MB  "
        f"{entry['export_seconds']:7.1f} s"
    )
    return entry
