"""Export of the hybrid CTC / attention model (``model.head: ctc_attention``) as three programs.

===================== ============================================================ ==============================
program               inputs                                                       outputs
===================== ============================================================ ==============================
``encoder``           x (N, T, F) f32, x_lens (N,) i64                             encoder_out (N, T', D),
                                                                                   encoder_out_lens (N,) i64,
                                                                                   ctc_log_probs (N, T', V)
``encoder_streaming`` x (N, 4C+3, F), x_lens (N,), then the encoder's streaming    encoder_out (N, C, D),
                      states in the order of ``encoder.state_specs``               encoder_out_lens (N,),
                                                                                   ctc_log_probs (N, C, V),
                                                                                   new_<state> for each state
``decoder``           encoder_out (N, T', D), encoder_out_lens (N,) i64,           log_probs (N, U, V)
                      hyps (N, U) i64 (``<sos>`` + tokens), hyps_lens (N,) i64
===================== ============================================================ ==============================

The encoders follow the RNN-T export's contract (:mod:`asrq.export.wrappers`): full context
takes ``T = 4k + 3``, ExecuTorch encoders take ``N = 1``, ONNX keeps ``N`` dynamic. The streaming
states are whatever the encoder declares (:mod:`asrq.models.states`); their specs (batch 1) go
into ``metadata.json`` as ``model.states``. The ExecuTorch decoder is memory-planned for at
most :data:`MAX_DECODER_HYPS` hypotheses of :data:`MAX_DECODER_TOKENS` steps over the
full-context encoder's longest output; the runtime splits larger n-best lists.

:func:`export_ctc_attention` is the straight line of :mod:`asrq.export.pipeline` (staging
directory, per-program export, parity against eager, metadata, atomic rename) for this head;
``export_loaded`` hands such models to it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from asrq import __version__
from asrq.config import to_dict
from asrq.export import parity as P
from asrq.export.wrappers import ProgramSpec, Target
from asrq.runtime.backends import METADATA, MIN_ENCODER_STEPS, program_path
from asrq.utils.io import atomic_write_bytes, atomic_write_json

HEAD = "ctc_attention"
#: Program names, in the order the export writes them.
PROGRAMS: tuple[str, ...] = ("encoder", "encoder_streaming", "decoder")
#: ExecuTorch decoder bounds (memory planning); ONNX has none.
MAX_DECODER_HYPS = 10
MAX_DECODER_TOKENS = 200


class CtcEncoderProgram(nn.Module):
    """Full-context encoder + CTC head: (N, T, F), (N,) -> (N, T', D), (N,), (N, T', V)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.ctc = model.ctc

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        enc, lens = self.encoder(x, x_lens)
        return enc, lens, self.ctc(enc).log_softmax(dim=-1)


class CtcStreamingEncoderProgram(nn.Module):
    """One chunk of the streaming encoder + CTC head; the states are positional tensors in the
    order of ``encoder.state_specs``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.ctc = model.ctc

    def forward(self, x: Tensor, x_lens: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        enc, lens, new_states = self.encoder.streaming_forward(x, x_lens, list(states))
        return (enc, lens, self.ctc(enc).log_softmax(dim=-1), *new_states)


class AttentionDecoderProgram(nn.Module):
    """Attention decoder log-probs for rescoring: (N, T', D), (N,), (N, U), (N,) -> (N, U, V)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(
        self, encoder_out: Tensor, encoder_out_lens: Tensor, hyps: Tensor, hyps_lens: Tensor
    ) -> Tensor:
        return self.decoder(encoder_out, encoder_out_lens, hyps, hyps_lens).log_softmax(dim=-1)


def program_specs(
    model: nn.Module,
    chunk_frames: int,
    left_frames: int,
    target: Target,
    max_encoder_steps: int = 750,
) -> dict[str, ProgramSpec]:
    """The three :class:`ProgramSpec` s of an eval-mode :class:`CtcAttentionModel` for ``target``."""
    if target not in ("onnx", "executorch"):
        raise ValueError(f"unknown export target {target!r}")
    if chunk_frames < 1 or left_frames < 0:
        raise ValueError(
            f"chunk_frames must be >= 1 and left_frames >= 0 (got {chunk_frames}, {left_frames})"
        )
    onnx = target == "onnx"
    f = model.encoder.cfg.feature_dim
    d = model.encoder.output_dim
    n_ex = 2 if onnx else 1
    batch = torch.export.Dim("N", min=1, max=1024) if onnx else None
    steps = torch.export.Dim(
        "steps", min=MIN_ENCODER_STEPS, max=None if onnx else max_encoder_steps
    )
    gen = torch.Generator().manual_seed(0)

    def axes(dd: dict[int, Any]) -> dict[int, Any] | None:
        dd = {k: v for k, v in dd.items() if v is not None}
        return dd or None

    k_ex = 12
    x = torch.randn(n_ex, 4 * k_ex + 3, f, generator=gen)
    x_lens = torch.tensor([4 * k_ex + 3, 4 * k_ex - 5][:n_ex], dtype=torch.int64)
    enc = ProgramSpec(
        "encoder",
        CtcEncoderProgram(model).eval(),
        (x, x_lens),
        ["x", "x_lens"],
        ["encoder_out", "encoder_out_lens", "ctc_log_probs"],
        {"x": axes({0: batch, 1: 4 * steps + 3}), "x_lens": axes({0: batch})},
        {"x": {0: "N", 1: "T"} if onnx else {1: "T"}, "x_lens": {0: "N"} if onnx else {}},
    )

    specs = model.encoder.state_specs(n_ex, left_frames)
    window = 4 * chunk_frames + 3
    xs = torch.randn(n_ex, window, f, generator=gen)
    xs_lens = torch.tensor([window, window - 6][:n_ex], dtype=torch.int64)
    names = [s.name for s in specs]
    stream = ProgramSpec(
        "encoder_streaming",
        CtcStreamingEncoderProgram(model).eval(),
        (xs, xs_lens, *(s.zeros() for s in specs)),
        ["x", "x_lens", *names],
        ["encoder_out", "encoder_out_lens", "ctc_log_probs", *(f"new_{n}" for n in names)],
        {
            "x": {0: batch},
            "x_lens": {0: batch},
            "states": tuple({s.batch_axis: batch} for s in specs),
        }
        if onnx
        else None,
        {"x": {0: "N"}, "x_lens": {0: "N"}, **{s.name: {s.batch_axis: "N"} for s in specs}}
        if onnx
        else {},
        states=list(specs),
    )

    # decoder: N hypotheses, T' encoder frames, U steps, all dynamic (bounded on ExecuTorch)
    hyp_n = torch.export.Dim("N", min=1, max=1024 if onnx else MAX_DECODER_HYPS)
    t_dim = torch.export.Dim("T", min=1, max=None if onnx else max_encoder_steps)
    u_dim = torch.export.Dim("U", min=1, max=None if onnx else MAX_DECODER_TOKENS)
    v = model.vocab_size
    hyps = torch.randint(0, v, (2, 5), generator=gen)
    hyps[:, 0] = model.sos_id
    dec = ProgramSpec(
        "decoder",
        AttentionDecoderProgram(model).eval(),
        (
            torch.randn(2, k_ex, d, generator=gen),
            torch.tensor([k_ex, k_ex - 3]),
            hyps,
            torch.tensor([5, 3]),
        ),
        ["encoder_out", "encoder_out_lens", "hyps", "hyps_lens"],
        ["log_probs"],
        {
            "encoder_out": {0: hyp_n, 1: t_dim},
            "encoder_out_lens": {0: hyp_n},
            "hyps": {0: hyp_n, 1: u_dim},
            "hyps_lens": {0: hyp_n},
        },
        {
            "encoder_out": {0: "N", 1: "T"},
            "encoder_out_lens": {0: "N"},
            "hyps": {0: "N", 1: "U"},
            "hyps_lens": {0: "N"},
        },
    )
    return {s.name: s for s in (enc, stream, dec)}


# --------------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------------
def model_metadata(
    loaded: Any,
    chunk_frames: int,
    left_frames: int,
    name: str,
    checkpoint: str | None,
    max_steps: int = 750,
) -> dict[str, Any]:
    """``metadata.json`` of a ctc_attention export (before programs, parity and sizes)."""
    from asrq.export.pipeline import FEATURE, FORMAT, SUBSAMPLING

    model, cfg = loaded.model, loaded.config
    enc = model.encoder.cfg
    return {
        "format": FORMAT,
        "asrq_version": __version__,
        "name": name,
        "subnet": getattr(loaded, "subnet", None),
        "head": HEAD,
        "model_type": f"{enc.type}_{HEAD}",
        "checkpoint": checkpoint,
        "checkpoint_step": loaded.meta.get("step"),
        "model": {
            "head": HEAD,
            "vocab_size": int(model.vocab_size),
            "blank_id": int(model.blank_id),
            "sos_id": int(model.sos_id),
            "eos_id": int(model.eos_id),
            "subsampling_factor": SUBSAMPLING,
            "chunk_frames": chunk_frames,
            "chunk_ms": chunk_frames * 10 * SUBSAMPLING,
            "left_frames": left_frames,
            "window_frames": 4 * chunk_frames + 3,
            "feature_dim": int(enc.feature_dim),
            "encoder_dim": int(model.encoder.output_dim),
            "num_layers": int(enc.num_layers),
            "decoder_layers": len(model.decoder.layers),
            # the streaming encoder's states in input order (batch 1), as the RNN-T export writes them
            "states": [s.to_json() for s in model.encoder.state_specs(1, left_frames)],
            "decoder_max_hyps": {"executorch": MAX_DECODER_HYPS},
            "decoder_max_tokens": {"executorch": MAX_DECODER_TOKENS},
            "decoder_max_frames": {"executorch": max_steps},
            "num_parameters": sum(p.numel() for p in model.parameters()),
        },
        "feature": FEATURE,
        "config": to_dict(cfg),
    }


_FLAT_KEYS = ("vocab_size", "blank_id", "sos_id", "eos_id", "subsampling_factor", "chunk_frames", "left_frames",
              "feature_dim", "encoder_dim")  # fmt: skip


def onnx_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """The flat key set stored in every ONNX file's metadata_props."""
    m = meta["model"]
    keys = (
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
    return {**{k: meta[k] for k in keys}, **{k: m[k] for k in _FLAT_KEYS}, "states": m["states"]}


def constant_methods(meta: dict[str, Any]) -> dict[str, int]:
    """Integer metadata stored in each ``.pte`` as constant methods."""
    return {k: int(meta["model"][k]) for k in _FLAT_KEYS}


# --------------------------------------------------------------------------------------------
# parity
# --------------------------------------------------------------------------------------------
def check_streaming(spec: ProgramSpec, run: P.Runner, backend: str, batch: int, left_frames: int, tol: float,
                    num_chunks: int = 3, seed: int = 0) -> list[P.ParityCheck]:  # fmt: skip
    """``num_chunks`` chunks through the exported streaming encoder carrying its states (any
    number, batch on each state's axis) against eager carrying its own; the last chunk is partly
    padding. The states are outputs ``3:``."""
    g = torch.Generator().manual_seed(seed)
    x0 = spec.example_inputs[0]
    w, f = x0.shape[1], x0.shape[2]
    states_rt = spec.module.encoder.init_states(batch, left_frames)
    states_eager = [s.clone() for s in states_rt]
    checks = []
    for k in range(num_chunks):
        x = torch.randn(batch, w, f, generator=g)
        lens = torch.full((batch,), w, dtype=torch.int64)
        if k == num_chunks - 1:
            lens[-1] = w - 7
        label = f"chunk {k + 1}/{num_chunks} N={batch} lens={lens.tolist()}"
        expected = P._eager(spec, (x, lens, *states_eager))
        try:
            out = run(spec.name, (x, lens, *states_rt))
        except Exception as e:  # a runtime failure is a parity failure, reported with its cause
            checks.append(
                P.ParityCheck(
                    spec.name, backend, label, float("inf"), False, f"{type(e).__name__}: {e}"
                )
            )
            break
        err, ok, detail = P.compare(out, expected, tol)
        checks.append(P.ParityCheck(spec.name, backend, label, err, ok, detail))
        states_eager, states_rt = expected[3:], [torch.as_tensor(t) for t in out[3:]]
    return checks


def decoder_cases(
    spec: ProgramSpec, vocab_size: int, sos: int, batch_max: int, seed: int = 0
) -> list[tuple[str, tuple[Tensor, ...]]]:
    """Decoder inputs at several (N, T', U), with padded encoder frames and hypotheses."""
    g = torch.Generator().manual_seed(seed)
    d = spec.example_inputs[0].shape[-1]
    cases = []
    for n, t, u in ((2, 12, 5), (1, 3, 1), (min(5, batch_max), 40, 17)):
        enc = torch.randn(n, t, d, generator=g)
        enc_lens = torch.randint(1, t + 1, (n,), generator=g)
        enc_lens[0] = t
        hyps = torch.randint(0, vocab_size, (n, u), generator=g)
        hyps[:, 0] = sos
        hyps_lens = torch.randint(1, u + 1, (n,), generator=g)
        hyps_lens[0] = u
        cases.append((f"N={n} T={t} U={u}", (enc, enc_lens, hyps, hyps_lens)))
    return cases


def check_parity(specs: dict[str, ProgramSpec], run: P.Runner, backend: str, vocab_size: int, sos: int,
                 left_frames: int, batch_dynamic: bool, tol: float = P.DEFAULT_TOL) -> list[P.ParityCheck]:  # fmt: skip
    """All parity checks of one backend (``specs`` hold the eager modules)."""
    checks = P.check_program(
        specs["encoder"], run, backend, P.encoder_cases(specs["encoder"], batch_dynamic), tol
    )
    checks += check_streaming(
        specs["encoder_streaming"], run, backend, 2 if batch_dynamic else 1, left_frames, tol
    )
    batch_max = 1024 if batch_dynamic else MAX_DECODER_HYPS
    checks += P.check_program(
        specs["decoder"],
        run,
        backend,
        decoder_cases(specs["decoder"], vocab_size, sos, batch_max),
        tol,
    )
    return checks


# --------------------------------------------------------------------------------------------
# the export
# --------------------------------------------------------------------------------------------
def export_ctc_attention(
    loaded: Any,
    out_dir: Path,
    *,
    targets: list[str],
    chunk_frames: int,
    left_frames: int,
    max_steps: int,
    opset: int,
    name: str,
    checkpoint: str | None,
    tol: float,
    say: Callable[[str], None],
) -> Any:
    """Export a loaded ctc_attention model (arguments resolved by
    :func:`asrq.export.pipeline.export_loaded`) -> :class:`~asrq.export.pipeline.ExportResult`."""
    from asrq.export import pipeline as PL

    PL._check_out_dir(out_dir)
    model = loaded.model.eval()
    meta = model_metadata(loaded, chunk_frames, left_frames, name, checkpoint, max_steps)
    meta["programs"] = {}
    report = P.ParityReport(tol)
    staging = PL._staging_dir(out_dir)
    try:
        for target in targets:
            specs = program_specs(
                model, chunk_frames, left_frames, target, max_encoder_steps=max_steps
            )
            entries: dict[str, Any] = {}
            for pname in PROGRAMS:
                entries[pname] = _export_one(
                    target, specs[pname], program_path(staging, pname, target), meta, opset
                )
                e = entries[pname]
                say(
                    f"{target:<10} {pname:<18} {e['bytes'] / 1e6:8.2f} MB  {e['export_seconds']:7.1f} s"
                )
            meta["programs"][target] = entries
            run, _ = PL._runner(target, staging)
            t0 = time.perf_counter()
            report.checks += check_parity(
                specs,
                run,
                target,
                model.vocab_size,
                model.sos_id,
                left_frames,
                target == "onnx",
                tol,
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
        meta["versions"] = PL.version_info()
        meta["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        atomic_write_bytes(staging / "bpe.model", loaded.bpe_model_bytes)
        PL.write_tokens(loaded.sp, staging / "tokens.txt")
        atomic_write_json(staging / METADATA, meta)
        PL._move_into_place(staging, out_dir)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
        raise
    return PL.ExportResult(out_dir, meta, report)


def _export_one(
    target: str, spec: ProgramSpec, path: Path, meta: dict[str, Any], opset: int
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
        entry.update(bytes=art.bytes, export_seconds=round(art.seconds["total"], 2),
                     stage_seconds={k: round(v, 2) for k, v in art.seconds.items()}, delegate="xnnpack", dtype="fp32",
                     xnnpack_partitions=art.delegates, portable_ops=art.portable_ops)  # fmt: skip
        if art.max_fbank_frames is not None:
            entry["max_fbank_frames"] = art.max_fbank_frames
    return entry
