"""Parity of exported programs against the eager model (icefall ``onnx_check.py``; STYLE.md
point 10).

Each program runs on random inputs in its runtime (onnxruntime / ExecuTorch) and in eager
PyTorch; float outputs must agree within ``tol`` (max abs error, default 1e-4), integer outputs
exactly. Quantized exports (``asrq export --quant``) are held to a signal-to-quantization-noise
ratio instead (``min_sqnr`` dB, each float output against the eager reference the quantization
scheme names, e.g. the fake-quant model); every check records its SQNR. Their encoders are fed
speech (fbank of dev utterances, ``speech``) where the export has it: random fbank frames lie
outside the activation ranges a quantized model was calibrated / trained on, and measured
lower SQNR than speech does (the trained demo model's int8 ``.pte``: 25 dB on noise, 32.5 dB
on speech; ONNX 34 / 39 dB). The full-context
encoder is checked at the traced length and at other lengths (its time axis is dynamic); the
streaming encoder runs 3 chunks carrying its states, against the eager streaming encoder
carrying its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from asrq.export.spec import ProgramSpec

DEFAULT_TOL = 1e-4
Runner = Callable[[str, Sequence[Tensor]], list[Tensor]]
#: one parity case: (label, program inputs)
Case = tuple[str, tuple[Tensor, ...]]


@dataclass
class ParityCheck:
    program: str
    backend: str
    case: str
    max_abs_err: float
    ok: bool
    detail: str = ""
    #: the lowest SQNR (dB) of the float outputs against eager (inf: equal)
    sqnr_db: float | None = None


@dataclass
class ParityReport:
    tol: float
    checks: list[ParityCheck] = field(default_factory=list)
    #: quantized exports: the SQNR (dB) each float output must reach (None: ``tol`` decides)
    min_sqnr: float | None = None
    #: what the encoders were fed: "random" or where the speech came from
    inputs: str = "random"

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[ParityCheck]:
        return [c for c in self.checks if not c.ok]

    def max_abs_err(self, backend: str | None = None, program: str | None = None) -> float:
        errs = [
            c.max_abs_err
            for c in self.checks
            if (backend is None or c.backend == backend)
            and (program is None or c.program == program)
        ]
        return max(errs, default=0.0)

    def min_sqnr_db(self, backend: str | None = None, program: str | None = None) -> float:
        vals = [
            c.sqnr_db
            for c in self.checks
            if c.sqnr_db is not None
            and (backend is None or c.backend == backend)
            and (program is None or c.program == program)
        ]
        return min(vals, default=float("inf"))

    def to_dict(self) -> dict:
        summary: dict[str, dict[str, float]] = {}
        sqnr: dict[str, dict[str, float | None]] = {}
        for c in self.checks:
            summary.setdefault(c.backend, {})
            summary[c.backend][c.program] = max(
                summary[c.backend].get(c.program, 0.0), c.max_abs_err
            )
            sqnr.setdefault(c.backend, {})[c.program] = _json_db(
                self.min_sqnr_db(c.backend, c.program)
            )
        return {
            "tol": self.tol,
            "min_sqnr_db": self.min_sqnr,
            "encoder_inputs": self.inputs,
            "ok": self.ok,
            "max_abs_err": summary,
            "sqnr_db": sqnr,
            "checks": [{**asdict(c), "sqnr_db": _json_db(c.sqnr_db)} for c in self.checks],
        }

    def table(self) -> str:
        lines = [
            f"{'backend':<11} {'program':<18} {'case':<34} {'max_abs_err':>11} {'sqnr_dB':>8}  ok"
        ]
        for c in self.checks:
            db = "" if c.sqnr_db is None else f"{c.sqnr_db:.1f}"
            lines.append(
                f"{c.backend:<11} {c.program:<18} {c.case:<34} {c.max_abs_err:>11.3e} {db:>8}  "
                + ("yes" if c.ok else "NO")
            )
        return "\n".join(lines)


class ParityError(RuntimeError):
    """An exported program disagrees with the eager model."""

    def __init__(self, report: ParityReport) -> None:
        bad = report.failures()
        msg = "; ".join(
            f"{c.backend}/{c.program} [{c.case}] max abs err {c.max_abs_err:.3e}"
            + (f" SQNR {c.sqnr_db:.1f} dB" if c.sqnr_db is not None else "")
            + (f" {c.detail}" if c.detail else "")
            for c in bad[:6]
        )
        bound = (
            f"tol {report.tol:g}" if report.min_sqnr is None else f"min SQNR {report.min_sqnr} dB"
        )
        super().__init__(f"export parity failed ({bound}): {msg}")
        self.report = report


def _json_db(v: float | None) -> float | str | None:
    """An SQNR for JSON (``inf`` as the string "inf")."""
    if v is None:
        return None
    return "inf" if v == float("inf") else round(v, 2)


def sqnr_db(ref: Tensor, test: Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(|ref|^2 / |ref - test|^2)`` in dB
    (torchao's ``compute_error``); inf when equal."""
    ref, test = ref.detach().double(), test.detach().double()
    noise = (ref - test).pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(ref.pow(2).sum() / noise))


def compare(
    outputs: Sequence[Tensor],
    expected: Sequence[Tensor],
    tol: float,
    min_sqnr: float | None = None,
) -> tuple[float, bool, str, float]:
    """Max abs error and lowest SQNR over float outputs (integer outputs must match exactly)
    -> (err, ok, detail, sqnr). ``ok`` needs ``err <= tol``, or with ``min_sqnr`` every float
    output's SQNR ``>= min_sqnr``."""
    inf = float("inf")
    if len(outputs) != len(expected):
        return inf, False, f"{len(outputs)} outputs, expected {len(expected)}", -inf
    err, ok, detail, low = 0.0, True, "", inf
    for i, (o, e) in enumerate(zip(outputs, expected, strict=True)):
        o = torch.as_tensor(o)
        if tuple(o.shape) != tuple(e.shape):
            return inf, False, f"output {i} shape {tuple(o.shape)} != {tuple(e.shape)}", -inf
        if e.dtype.is_floating_point:
            d = (o.double() - e.double()).abs().max().item() if e.numel() else 0.0
            if not d == d:  # NaN
                return inf, False, f"output {i} has NaN", -inf
            err = max(err, d)
            db = sqnr_db(e, o) if e.numel() else inf
            low = min(low, db)
            ok = ok and (d <= tol if min_sqnr is None else (d <= tol or db >= min_sqnr))
        elif not torch.equal(o.to(e.dtype), e):
            ok, detail = False, f"integer output {i} differs"
    return err, ok, detail, low


def eager_outputs(spec: ProgramSpec, inputs: Sequence[Tensor]) -> list[Tensor]:
    with torch.no_grad():
        out = spec.module(*inputs)
    return list(out) if isinstance(out, tuple | list) else [out]


def encoder_cases(spec: ProgramSpec, batch_dynamic: bool, seed: int = 0) -> list[Case]:
    """Inputs for the full-context encoder: the traced length and two others (``T = 4k + 3``)."""
    g = torch.Generator().manual_seed(seed)
    f = spec.example_inputs[0].shape[-1]
    t0 = spec.example_inputs[0].shape[1]
    shapes = (
        [(t0, [t0, t0 - 9]), (4 * 5 + 3, [23, 15]), (4 * 61 + 3, [247, 180])]
        if batch_dynamic
        else [(t0, [t0]), (4 * 5 + 3, [20]), (4 * 61 + 3, [247])]
    )
    cases = []
    for t, lens in shapes:
        x = torch.randn(len(lens), t, f, generator=g)
        cases.append(
            (f"N={len(lens)} T={t} lens={lens}", (x, torch.tensor(lens, dtype=torch.int64)))
        )
    return cases


def speech_cases(speech: Sequence[Tensor], max_frames: int | None = None) -> list[Case]:
    """Full-context encoder inputs from fbank utterances ``(T, F)`` (each cut to ``max_frames``),
    one case each at batch 1."""
    cases = []
    for i, x in enumerate(speech):
        x = x[:max_frames] if max_frames else x
        lens = torch.tensor([x.shape[0]], dtype=torch.int64)
        cases.append((f"speech {i + 1} T={x.shape[0]}", (x[None].float(), lens)))
    return cases


def check_program(
    spec: ProgramSpec,
    run: Runner,
    backend: str,
    cases: list[Case],
    tol: float,
    min_sqnr: float | None = None,
) -> list[ParityCheck]:
    checks = []
    for label, inputs in cases:
        try:
            out = run(spec.name, inputs)
        except Exception as e:  # a runtime failure is a parity failure, reported with its cause
            checks.append(
                ParityCheck(
                    spec.name, backend, label, float("inf"), False, f"{type(e).__name__}: {e}"
                )
            )
            continue
        err, ok, detail, db = compare(out, eager_outputs(spec, inputs), tol, min_sqnr)
        checks.append(ParityCheck(spec.name, backend, label, err, ok, detail, db))
    return checks


def check_streaming(
    spec: ProgramSpec,
    run: Runner,
    backend: str,
    batch: int,
    tol: float,
    num_chunks: int = 3,
    seed: int = 0,
    min_sqnr: float | None = None,
    speech: Tensor | None = None,
) -> list[ParityCheck]:
    """``num_chunks`` chunks through the exported streaming encoder carrying its states, against
    eager carrying its own; the last chunk is partly padding (``x_lens`` < window). The states
    are the program's last outputs (as many as ``spec.states``). ``speech`` ``(T, F)``: the
    chunks are its consecutive windows (every batch row the same) instead of random frames."""
    g = torch.Generator().manual_seed(seed)
    x0 = spec.example_inputs[0]
    w, f = x0.shape[1], x0.shape[2]
    states_rt = [s.with_batch(batch).zeros() for s in spec.states]
    states_eager = [s.clone() for s in states_rt]
    checks = []
    for k in range(num_chunks):
        if speech is None:
            x = torch.randn(batch, w, f, generator=g)
        else:
            win = speech[k * w : (k + 1) * w].float()
            x = torch.nn.functional.pad(win, (0, 0, 0, w - win.shape[0]))[None].repeat(batch, 1, 1)
        lens = torch.full((batch,), w, dtype=torch.int64)
        if k == num_chunks - 1:
            lens[-1] = w - 7
        label = f"chunk {k + 1}/{num_chunks} N={batch} lens={lens.tolist()}"
        if speech is not None:
            label = "speech " + label
        expected = eager_outputs(spec, (x, lens, *states_eager))
        try:
            out = run(spec.name, (x, lens, *states_rt))
        except Exception as e:
            checks.append(
                ParityCheck(
                    spec.name, backend, label, float("inf"), False, f"{type(e).__name__}: {e}"
                )
            )
            break
        err, ok, detail, db = compare(out, expected, tol, min_sqnr)
        checks.append(ParityCheck(spec.name, backend, label, err, ok, detail, db))
        n_out = len(spec.output_names) - len(spec.states)
        states_eager, states_rt = expected[n_out:], [torch.as_tensor(t) for t in out[n_out:]]
    return checks


def check_encoders(
    specs: dict[str, ProgramSpec],
    run: Runner,
    backend: str,
    batch_dynamic: bool,
    tol: float,
    programs: Sequence[str],
    min_sqnr: float | None = None,
    speech: Sequence[Tensor] = (),
    max_frames: int | None = None,
) -> list[ParityCheck]:
    """The checks every head shares: the full-context ``encoder`` at three lengths and the
    ``encoder_streaming`` over three chunks (batch 2 where the batch is dynamic), if in
    ``programs``; with ``speech`` (fbank utterances ``(T, F)``) on those instead of random
    frames (the full-context encoder on each utterance cut to ``max_frames``, the streaming
    encoder on the first one's windows)."""
    checks: list[ParityCheck] = []
    if "encoder" in programs:
        if speech:
            cases = speech_cases(speech, max_frames)
        else:
            cases = encoder_cases(specs["encoder"], batch_dynamic)
        checks += check_program(specs["encoder"], run, backend, cases, tol, min_sqnr)
    if "encoder_streaming" in programs:
        batch = 2 if batch_dynamic else 1
        checks += check_streaming(
            specs["encoder_streaming"],
            run,
            backend,
            batch,
            tol,
            min_sqnr=min_sqnr,
            speech=speech[0] if speech else None,
        )
    return checks
