"""Error bars for WER: bootstrap confidence intervals over utterances (Bisani & Ney 2004).

A test set is a sample of utterances; a WER measured on it varies with the sample. Both
functions resample utterances with replacement ``n_boot`` times and recompute the corpus WER
of each resample as *sum of errors / sum of reference words* (not a mean of per-utterance
WERs), then report the percentile interval.

- :func:`wer_ci`: one system -> ``{"wer", "lo", "hi", ...}``.
- :func:`paired_by_id`: the same for two ``[cut_id, errors, ref_words]`` lists (the
  ``utterances`` of a decode summary JSON), matched by cut id.
- :func:`paired_wer_diff`: two systems on the *same* utterances; each resample draws the same
  utterances for both, so what the utterances have in common (hard ones are hard for both)
  cancels, and the interval of the difference is much narrower than two separate intervals
  would suggest -> ``{"diff", "lo", "hi", "p_better", ...}``.

Inputs, per system, are any of:

- a sequence of :class:`asrq.decode.wer.UttResult` (what ``asrq decode`` scores), paired by
  ``cut_id`` in :func:`paired_wer_diff`;
- a sequence of ``(errors, ref_words)`` pairs, one per utterance (paired by position);
- for :func:`wer_ci` also ``refs, hyps`` (two sequences of strings; scored with
  :func:`asrq.decode.wer.score_utterance`).

All WERs are in percent, like :attr:`asrq.decode.wer.WerStats.wer`. Same ``seed``, same
intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asrq.decode.wer import UttResult, score_utterance
from asrq.utils.io import AsrqError

N_BOOT = 1000
LEVEL = 0.95
_CHUNK = 250  # resamples drawn at once: bounds memory to CHUNK x utterances indices

PerUtt = Sequence[UttResult] | Sequence[tuple[int, int]]


def utterance_counts(
    results: PerUtt | Sequence[str], hyps: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-utterance ``(errors, ref_words)`` as two int64 arrays ``(U,)``, from UttResults,
    ``(errors, words)`` pairs, or ``refs`` + ``hyps`` strings."""
    if hyps is not None:
        if len(results) != len(hyps):
            raise AsrqError(f"{len(results)} references but {len(hyps)} hypotheses")
        results = [
            score_utterance(str(i), r, h)
            for i, (r, h) in enumerate(zip(results, hyps, strict=True))
        ]  # type: ignore[arg-type]
    if len(results) == 0:
        raise AsrqError("no utterances to score")
    first = results[0]
    if isinstance(first, UttResult):
        errs = [r.errors for r in results]  # type: ignore[union-attr]
        words = [r.num_words for r in results]  # type: ignore[union-attr]
    elif isinstance(first, str):
        raise AsrqError("got reference strings without hypotheses; pass refs and hyps")
    else:
        try:
            errs, words = zip(*((int(e), int(w)) for e, w in results), strict=True)  # type: ignore[misc]
        except (TypeError, ValueError) as e:
            raise AsrqError(
                "per-utterance input must be UttResults or (errors, ref_words) pairs"
            ) from e
    e_arr, w_arr = np.asarray(errs, dtype=np.int64), np.asarray(words, dtype=np.int64)
    if (e_arr < 0).any() or (w_arr < 0).any():
        raise AsrqError("negative error or word counts")
    return e_arr, w_arr


def _wer(errors: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Corpus WER in percent of summed counts (0 when both are 0, inf for errors on 0 words)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        w = 100.0 * errors / words
    return np.where(words == 0, np.where(errors == 0, 0.0, np.inf), w)


def _resampled_sums(columns: list[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """Sum of each column over ``n_boot`` resamples (with replacement) of the rows; the same
    row indices for every column. Returns ``len(columns)`` arrays ``(n_boot,)``."""
    if n_boot < 1:
        raise AsrqError(f"n_boot must be >= 1, got {n_boot}")
    n = len(columns[0])
    rng = np.random.default_rng(seed)
    out = [np.empty(n_boot, dtype=np.int64) for _ in columns]
    for start in range(0, n_boot, _CHUNK):
        k = min(_CHUNK, n_boot - start)
        idx = rng.integers(0, n, size=(k, n))  # (k, U)
        for col, acc in zip(columns, out, strict=True):
            acc[start : start + k] = col[idx].sum(axis=1)
    return out


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise AsrqError(f"level must be in (0, 1), got {level}")
    a = (1 - level) / 2
    lo, hi = np.quantile(samples, [a, 1 - a])
    return float(lo), float(hi)


def wer_ci(
    results: PerUtt | Sequence[str],
    hyps: Sequence[str] | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Any]:
    """WER (percent) with a ``level`` bootstrap percentile interval over utterances.

    Returns ``{"wer", "lo", "hi", "num_utts", "num_words", "errors", "n_boot", "level",
    "seed"}``; ``wer`` is the WER of the whole set (not a bootstrap mean), so it matches
    :func:`asrq.decode.wer.compute_wer`.
    """
    errors, words = utterance_counts(results, hyps)
    be, bw = _resampled_sums([errors, words], n_boot, seed)
    lo, hi = _interval(_wer(be, bw), level)
    return {
        "wer": float(_wer(errors.sum(), words.sum())),
        "lo": lo,
        "hi": hi,
        "num_utts": int(len(errors)),
        "num_words": int(words.sum()),
        "errors": int(errors.sum()),
        "n_boot": n_boot,
        "level": level,
        "seed": seed,
    }


def _paired(a: PerUtt, b: PerUtt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Errors of a, errors of b, reference words: matched by cut_id for UttResults."""
    if len(a) != len(b):
        raise AsrqError(f"paired comparison needs the same utterances: {len(a)} vs {len(b)}")
    if len(a) and isinstance(a[0], UttResult) and isinstance(b[0], UttResult):
        by_id = {r.cut_id: r for r in b}  # type: ignore[union-attr]
        missing = [r.cut_id for r in a if r.cut_id not in by_id]  # type: ignore[union-attr]
        if missing or len(by_id) != len(b):
            raise AsrqError(
                f"paired comparison needs the same utterances: {missing[0]!r} of A not in B"
                if missing
                else "paired comparison: duplicate cut ids in B"
            )
        b = [by_id[r.cut_id] for r in a]  # type: ignore[union-attr]
    ea, wa = utterance_counts(a)
    eb, wb = utterance_counts(b)
    if not np.array_equal(wa, wb):
        i = int(np.flatnonzero(wa != wb)[0])
        raise AsrqError(
            f"paired comparison: utterance {i} has {wa[i]} reference words in A but {wb[i]} "
            "in B (not the same references)"
        )
    return ea, eb, wa


def paired_wer_diff(
    a: PerUtt,
    b: PerUtt,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Any]:
    """Paired bootstrap of ``WER(a) - WER(b)`` (percentage points) on the same utterances.

    Returns ``{"diff", "lo", "hi", "p_better", "wer_a", "wer_b", "num_utts", "n_boot",
    "level", "seed"}``: ``diff`` on the whole set (negative: A has the lower WER), its
    ``level`` percentile interval, and ``p_better``, the share of resamples in which A's WER
    is strictly lower than B's (1 - p_better - ties = share where B is at least as good).
    An interval that excludes 0 means the difference holds at that level.
    """
    ea, eb, words = _paired(a, b)
    sa, sb, sw = _resampled_sums([ea, eb, words], n_boot, seed)
    wa, wb = _wer(sa, sw), _wer(sb, sw)
    lo, hi = _interval(wa - wb, level)
    wer_a, wer_b = float(_wer(ea.sum(), words.sum())), float(_wer(eb.sum(), words.sum()))
    return {
        "diff": wer_a - wer_b,
        "lo": lo,
        "hi": hi,
        "p_better": float(np.mean(wa < wb)),
        "wer_a": wer_a,
        "wer_b": wer_b,
        "num_utts": int(len(words)),
        "n_boot": n_boot,
        "level": level,
        "seed": seed,
    }


def paired_by_id(
    a: Sequence[Sequence[Any]],
    b: Sequence[Sequence[Any]],
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Any]:
    """:func:`paired_wer_diff` of two ``[cut_id, errors, ref_words]`` lists (what
    :meth:`asrq.decode.evaluate.EvalResult.per_utterance` writes), matched by cut id."""
    try:
        ka = {str(r[0]): (int(r[1]), int(r[2])) for r in a}
        kb = {str(r[0]): (int(r[1]), int(r[2])) for r in b}
    except (TypeError, ValueError, IndexError) as e:
        raise AsrqError("per-utterance rows must be [cut_id, errors, ref_words]") from e
    if len(ka) != len(a) or len(kb) != len(b):
        raise AsrqError("paired comparison: duplicate cut ids")
    if ka.keys() != kb.keys():
        only = sorted(ka.keys() ^ kb.keys())
        raise AsrqError(
            f"paired comparison needs the same utterances: {len(only)} cut ids in only one "
            f"system (e.g. {only[0]!r})"
        )
    ids = list(ka)
    return paired_wer_diff(
        [ka[i] for i in ids], [kb[i] for i in ids], n_boot=n_boot, seed=seed, level=level
    )


def read_utterances(path: str | Path) -> list[list[Any]]:
    """The per-utterance ``[cut_id, errors, ref_words]`` rows of a decode JSON
    (``wer-*.json`` of ``asrq decode`` / the recipe's decode stage)."""
    import json

    p = Path(path)
    try:
        rows = json.loads(p.read_text())["utterances"]
    except FileNotFoundError as e:
        raise AsrqError(f"{p}: decode result not found") from e
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise AsrqError(
            f"{p}: no per-utterance rows (`utterances`); decode again with this version"
        ) from e
    return rows


def paired_files(a: str | Path, b: str | Path, **kw: Any) -> dict[str, Any]:
    """:func:`paired_by_id` of two decode JSONs (A minus B, percentage points)."""
    return paired_by_id(read_utterances(a), read_utterances(b), **kw)
