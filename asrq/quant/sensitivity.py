"""The noise floor of a quantized model's own outputs: how far they move when its input moves by
far less than float rounding does between two runtimes.

A fake-quantized network rounds at every quantizer, so it is a step function of its input: a
value that lands near a rounding boundary in one layer moves by a whole step when its input
moves by 1e-6, and the step feeds the next layer's quantizers. Two correct implementations of
the same int8 program (the eager fake-quant model, onnxruntime's integer kernels, XNNPACK's)
differ in float summation order and requantization arithmetic, i.e. by perturbations of that
size, so they cannot agree more closely than the model agrees with itself under them. This
module measures that floor, to read the exported programs' parity against:

- :func:`output_floor`: SQNR of the streaming encoder's output over a few chunks, eager against
  eager on inputs scaled by ``1 + rel * N(0, 1)`` per element;
- :func:`perturbed_runner`: that perturbed eager model as a "runtime" for
  :func:`parity_over_utterances`, the floor of the programs' parity over a whole test set;
- :func:`transcript_floor`: greedy WER of the eager model on perturbed fbank frames against the
  unperturbed run, paired by utterance, for a few perturbation seeds; and of the same model
  run with another number of threads (PyTorch's own summation order, no perturbation).

A float model has no such floor (its outputs move by ~``rel``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

#: default relative input perturbation: about 8 float32 ulps, well under the rounding error of
#: a 144-term float32 dot product
DEFAULT_REL = 1e-6


@contextlib.contextmanager
def perturbed_fbank(model: nn.Module, rel: float, seed: int) -> Iterator[None]:
    """While active, every fbank tensor ``(N, T, F)`` entering ``model.encoder.embed`` (the
    subsampling, which the full-context and the streaming encoder both call first) is scaled by
    ``1 + rel * N(0, 1)`` per element, from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)

    def hook(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x: Tensor = args[0]
        noise = torch.randn(x.shape, generator=g).to(x)
        return (x * (1 + rel * noise), *args[1:])

    handle = model.encoder.embed.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def output_floor(
    spec: Any,
    speech: Tensor,
    rel: float = DEFAULT_REL,
    seeds: Sequence[int] = (0, 1, 2),
    num_chunks: int = 3,
) -> list[float | str]:
    """SQNR (dB; ``"inf"``: equal) of a streaming encoder program's first output (``spec``: an
    :class:`asrq.export.spec.ProgramSpec` of ``encoder_streaming``) over the first
    ``num_chunks`` windows of ``speech`` ``(T, F)`` from zero states, each run carrying its own
    states (as the export's parity check does): eager against eager on the windows scaled by
    ``1 + rel * N(0, 1)``; per seed, the lowest over the chunks."""
    from asrq.export.parity import sqnr_db

    w = spec.example_inputs[0].shape[1]
    n_out = len(spec.output_names) - len(spec.states)
    lens = torch.tensor([w], dtype=torch.int64)
    windows = []
    for k in range(num_chunks):
        win = speech[k * w : (k + 1) * w].float()
        if win.shape[0] == 0:
            break
        windows.append(nn.functional.pad(win, (0, 0, 0, w - win.shape[0]))[None])

    def run(noise: torch.Generator | None) -> list[Tensor]:
        states = [s.with_batch(1).zeros() for s in spec.states]
        outs = []
        for x in windows:
            if noise is not None:
                x = x * (1 + rel * torch.randn(x.shape, generator=noise))
            res = spec.module(x, lens, *states)
            outs.append(res[0])
            states = list(res[n_out:])
        return outs

    ref = run(None)
    out: list[float | str] = []
    for seed in seeds:
        got = run(torch.Generator().manual_seed(seed))
        db = min(sqnr_db(a, b) for a, b in zip(ref, got, strict=True))
        out.append(_finite(db))
    return out


def transcript_floor(
    loaded: Any,
    cuts: str | Path,
    rel: float = DEFAULT_REL,
    seeds: Sequence[int] = (0, 1, 2),
    streaming: bool = True,
    threads: int = 1,
    other_threads: int | None = 2,
) -> dict[str, Any]:
    """Streaming (or full-context) greedy WER of ``loaded`` (a LoadedModel) on ``cuts``: the
    reference run at ``threads`` intra-op threads; one run per seed with its fbank frames
    perturbed (:func:`perturbed_fbank`), same threads; and (``other_threads``) one unperturbed
    run at that many threads (a different float summation order, nothing else). Each is paired
    by utterance against the reference."""
    from asrq.decode.bootstrap import paired_by_id
    from asrq.decode.evaluate import evaluate

    def score(n: int) -> dict[str, Any]:
        res = evaluate(loaded, cuts, streaming=streaming, progress=False, threads=n)
        return res.summary(per_utterance=True)

    def against(s: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
        d = paired_by_id(s["utterances"], ref["utterances"])
        errs = {str(u[0]): u[1] for u in ref["utterances"]}
        return {
            "wer": s["wer"],
            "minus_reference": {k: round(d[k], 3) for k in ("diff", "lo", "hi")},
            "utterances_with_other_error_count": sum(
                errs[str(u[0])] != u[1] for u in s["utterances"]
            ),
        }

    ref = score(threads)
    runs = []
    for seed in seeds:
        with perturbed_fbank(loaded.model, rel, seed):
            runs.append({"seed": seed, **against(score(threads), ref)})
    out: dict[str, Any] = {
        "rel": rel,
        "streaming": streaming,
        "threads": threads,
        "reference_wer": ref["wer"],
        "num_words": ref.get("num_words"),
        "num_utts": ref.get("num_utts"),
        "perturbed": runs,
        "max_abs_diff": max(abs(r["minus_reference"]["diff"]) for r in runs),
    }
    if other_threads:
        out["other_threads"] = {"threads": other_threads, **against(score(other_threads), ref)}
    return out


def perturbed_runner(spec: Any, rel: float = DEFAULT_REL, seed: int = 0) -> Any:
    """A ``run(name, inputs)`` for :func:`parity_over_utterances` that is the eager model of
    ``spec`` itself, fed each fbank chunk ``inputs[0]`` scaled by ``1 + rel * N(0, 1)`` per
    element (its states are the ones it carries): parity against it is the model's own floor,
    over as many chunks as the programs' parity."""
    noise = torch.Generator().manual_seed(seed)

    def run(_name: str, inputs: Sequence[Tensor]) -> list[Tensor]:
        x = inputs[0] * (1 + rel * torch.randn(inputs[0].shape, generator=noise))
        with torch.no_grad():
            return list(spec.module(x, *inputs[1:]))

    return run


def parity_over_utterances(
    spec: Any,
    run: Any,
    backend: str,
    utterances: Sequence[tuple[str, Tensor]],
    exact_db: float = 100.0,
) -> dict[str, Any]:
    """The streaming encoder program against its eager model on whole utterances (``(id,
    fbank (T, F))``), window after window from zero states, each side carrying its own states
    (:func:`asrq.export.parity.check_streaming` over every window): per utterance the lowest
    chunk SQNR and the first chunk below ``exact_db`` (where a rounding tie first went the other
    way; the states carry it on); over all, how many chunks ran before the first such tie, the
    chunk SQNR quantiles and the share of chunks >= 30 dB. ``run(name, inputs)`` runs the
    program (an :func:`asrq.runtime.backends.open_programs` runner's ``run``)."""
    from asrq.export.parity import check_streaming

    w = spec.example_inputs[0].shape[1]
    per: dict[str, dict[str, Any]] = {}
    chunk_db: list[float] = []
    for uid, feats in utterances:
        n = max(1, -(-int(feats.shape[0]) // w))
        checks = check_streaming(
            spec, run, backend, 1, float("inf"), num_chunks=n, min_sqnr=0.0, speech=feats
        )
        if len(checks) < n or any(c.sqnr_db is None for c in checks):
            raise RuntimeError(f"{uid}: {backend} failed: {checks[-1].detail}")
        db = [float(c.sqnr_db) for c in checks]
        chunk_db += db
        first = next((i for i, x in enumerate(db) if x < exact_db), None)
        per[uid] = {"chunks": n, "min_db": _finite(min(db)), "first_below_exact": first}
    if not per:
        raise ValueError("parity_over_utterances: no utterances")
    before = sum(
        v["first_below_exact"] if v["first_below_exact"] is not None else v["chunks"]
        for v in per.values()
    )
    ranked = sorted(chunk_db)

    def q(p: float) -> float | str:
        return _finite(ranked[min(len(ranked) - 1, int(p * len(ranked)))])

    return {
        "backend": backend,
        "exact_db": exact_db,
        "utterances": len(per),
        "chunks": len(chunk_db),
        "chunks_before_first_tie": before,
        "utterances_with_a_tie": sum(v["first_below_exact"] is not None for v in per.values()),
        "chunk_db_quantiles": {"min": q(0.0), "p01": q(0.01), "p10": q(0.1), "p50": q(0.5)},
        "share_chunks_ge_30db": round(sum(x >= 30.0 for x in chunk_db) / len(chunk_db), 4),
        "per_utterance": per,
    }


def _finite(db: float) -> float | str:
    return round(db, 2) if db != float("inf") else "inf"  # JSON has no inf
