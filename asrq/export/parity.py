"""Parity of exported programs against the eager model (icefall ``onnx_check.py``; STYLE.md
point 10).

Each program runs on random inputs in its runtime (onnxruntime / ExecuTorch) and in eager
PyTorch; float outputs must agree within ``tol`` (max abs error, default 1e-4), integer outputs
exactly. The full-context encoder is checked at the traced length and at other lengths (its time
axis is dynamic); the streaming encoder runs 3 chunks carrying its states, against the eager
streaming encoder carrying its own.
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


@dataclass
class ParityReport:
    tol: float
    checks: list[ParityCheck] = field(default_factory=list)

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

    def to_dict(self) -> dict:
        summary: dict[str, dict[str, float]] = {}
        for c in self.checks:
            summary.setdefault(c.backend, {})
            summary[c.backend][c.program] = max(
                summary[c.backend].get(c.program, 0.0), c.max_abs_err
            )
        return {
            "tol": self.tol,
            "ok": self.ok,
            "max_abs_err": summary,
            "checks": [asdict(c) for c in self.checks],
        }

    def table(self) -> str:
        lines = [f"{'backend':<11} {'program':<18} {'case':<34} {'max_abs_err':>11}  ok"]
        for c in self.checks:
            lines.append(
                f"{c.backend:<11} {c.program:<18} {c.case:<34} {c.max_abs_err:>11.3e}  "
                + ("yes" if c.ok else "NO")
            )
        return "\n".join(lines)


class ParityError(RuntimeError):
    """An exported program disagrees with the eager model."""

    def __init__(self, report: ParityReport) -> None:
        bad = report.failures()
        msg = "; ".join(
            f"{c.backend}/{c.program} [{c.case}] max abs err {c.max_abs_err:.3e}"
            + (f" {c.detail}" if c.detail else "")
            for c in bad[:6]
        )
        super().__init__(f"export parity failed (tol {report.tol:g}): {msg}")
        self.report = report


def compare(
    outputs: Sequence[Tensor], expected: Sequence[Tensor], tol: float
) -> tuple[float, bool, str]:
    """Max abs error over float outputs (integer outputs must match exactly) ->
    (err, ok, detail)."""
    if len(outputs) != len(expected):
        return float("inf"), False, f"{len(outputs)} outputs, expected {len(expected)}"
    err, ok, detail = 0.0, True, ""
    for i, (o, e) in enumerate(zip(outputs, expected, strict=True)):
        o = torch.as_tensor(o)
        if tuple(o.shape) != tuple(e.shape):
            return float("inf"), False, f"output {i} shape {tuple(o.shape)} != {tuple(e.shape)}"
        if e.dtype.is_floating_point:
            d = (o.double() - e.double()).abs().max().item() if e.numel() else 0.0
            if not d == d:  # NaN
                return float("inf"), False, f"output {i} has NaN"
            err = max(err, d)
            ok = ok and d <= tol
        elif not torch.equal(o.to(e.dtype), e):
            ok, detail = False, f"integer output {i} differs"
    return err, ok, detail


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


def check_program(
    spec: ProgramSpec,
    run: Runner,
    backend: str,
    cases: list[Case],
    tol: float,
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
        err, ok, detail = compare(out, eager_outputs(spec, inputs), tol)
        checks.append(ParityCheck(spec.name, backend, label, err, ok, detail))
    return checks


def check_streaming(
    spec: ProgramSpec,
    run: Runner,
    backend: str,
    batch: int,
    tol: float,
    num_chunks: int = 3,
    seed: int = 0,
) -> list[ParityCheck]:
    """``num_chunks`` chunks through the exported streaming encoder carrying its states, against
    eager carrying its own; the last chunk is partly padding (``x_lens`` < window). The states
    are the program's last outputs (as many as ``spec.states``)."""
    g = torch.Generator().manual_seed(seed)
    x0 = spec.example_inputs[0]
    w, f = x0.shape[1], x0.shape[2]
    states_rt = [s.with_batch(batch).zeros() for s in spec.states]
    states_eager = [s.clone() for s in states_rt]
    checks = []
    for k in range(num_chunks):
        x = torch.randn(batch, w, f, generator=g)
        lens = torch.full((batch,), w, dtype=torch.int64)
        if k == num_chunks - 1:
            lens[-1] = w - 7
        label = f"chunk {k + 1}/{num_chunks} N={batch} lens={lens.tolist()}"
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
        err, ok, detail = compare(out, expected, tol)
        checks.append(ParityCheck(spec.name, backend, label, err, ok, detail))
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
) -> list[ParityCheck]:
    """The checks every head shares: the full-context ``encoder`` at three lengths and the
    ``encoder_streaming`` over three chunks (batch 2 where the batch is dynamic), if in
    ``programs``."""
    checks: list[ParityCheck] = []
    if "encoder" in programs:
        cases = encoder_cases(specs["encoder"], batch_dynamic)
        checks += check_program(specs["encoder"], run, backend, cases, tol)
    if "encoder_streaming" in programs:
        batch = 2 if batch_dynamic else 1
        checks += check_streaming(specs["encoder_streaming"], run, backend, batch, tol)
    return checks
