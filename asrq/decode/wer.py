"""Word error rate with kaldialign, per utterance and in total, and an icefall-style
``errs-*.txt`` report (totals at the top, then every utterance's alignment)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import kaldialign

from asrq.utils.io import atomic_write_text

EPS = "*"


@dataclass
class UttResult:
    """One utterance: reference and hypothesis text and its word errors against the reference."""

    cut_id: str
    ref: str
    hyp: str
    num_words: int
    ins: int
    dels: int
    subs: int

    @property
    def errors(self) -> int:
        return self.ins + self.dels + self.subs

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class WerStats:
    """Totals over utterances; ``wer`` in percent (``inf`` when there are errors but no
    reference words, 0 when both are empty)."""

    num_utts: int
    num_words: int
    ins: int
    dels: int
    subs: int

    @property
    def errors(self) -> int:
        return self.ins + self.dels + self.subs

    @property
    def wer(self) -> float:
        if self.num_words == 0:
            return 0.0 if self.errors == 0 else math.inf
        return 100.0 * self.errors / self.num_words


def align_words(ref: Sequence[str], hyp: Sequence[str]) -> list[tuple[str, str]]:
    """Levenshtein alignment: pairs (ref word or ``*``, hyp word or ``*``)."""
    return kaldialign.align(list(ref), list(hyp), EPS)


def score_utterance(cut_id: str, ref: str, hyp: str) -> UttResult:
    """Align the whitespace-split words of ``ref`` and ``hyp`` and count the errors."""
    r, h = ref.split(), hyp.split()
    ins = dels = subs = 0
    for a, b in align_words(r, h):
        if a == EPS:
            ins += 1
        elif b == EPS:
            dels += 1
        elif a != b:
            subs += 1
    return UttResult(cut_id, " ".join(r), " ".join(h), len(r), ins, dels, subs)


def compute_wer(results: Sequence[UttResult]) -> WerStats:
    return WerStats(
        num_utts=len(results),
        num_words=sum(r.num_words for r in results),
        ins=sum(r.ins for r in results),
        dels=sum(r.dels for r in results),
        subs=sum(r.subs for r in results),
    )


def _aligned_line(r: UttResult) -> str:
    """``WORD (REF->HYP) WORD ...`` with ``*`` for a missing word, as in icefall."""
    out = []
    for a, b in align_words(r.ref.split(), r.hyp.split()):
        out.append(a if a == b else f"({a}->{b})")
    return " ".join(out)


def format_errors(results: Sequence[UttResult], title: str = "") -> str:
    """The text of an errors report (see :func:`write_errors`)."""
    st = compute_wer(results)
    lines = []
    if title:
        lines.append(f"# {title}")
    lines += [
        f"%WER = {st.wer:.2f}",
        f"Errors: {st.ins} insertions, {st.dels} deletions, {st.subs} substitutions, "
        f"over {st.num_words} reference words in {st.num_utts} utterances",
        "",
        "PER-UTT DETAILS: id, ins/del/sub, REF, HYP, alignment (ref->hyp)",
    ]
    subs: Counter[tuple[str, str]] = Counter()
    dels: Counter[str] = Counter()
    ins: Counter[str] = Counter()
    for r in results:
        lines += [
            f"{r.cut_id}:\tins={r.ins} del={r.dels} sub={r.subs} words={r.num_words}",
            f"{r.cut_id}:\tREF: {r.ref}",
            f"{r.cut_id}:\tHYP: {r.hyp}",
            f"{r.cut_id}:\tALI: {_aligned_line(r)}",
        ]
        for a, b in align_words(r.ref.split(), r.hyp.split()):
            if a == EPS:
                ins[b] += 1
            elif b == EPS:
                dels[a] += 1
            elif a != b:
                subs[(a, b)] += 1
    lines += ["", "SUBSTITUTIONS: count ref -> hyp"]
    lines += [f"{c}   {a} -> {b}" for (a, b), c in subs.most_common()]
    lines += ["", "DELETIONS: count ref"]
    lines += [f"{c}   {a}" for a, c in dels.most_common()]
    lines += ["", "INSERTIONS: count hyp"]
    lines += [f"{c}   {b}" for b, c in ins.most_common()]
    return "\n".join(lines) + "\n"


def write_errors(path: str | Path, results: Sequence[UttResult], title: str = "") -> Path:
    """Atomically write the errors report: totals (%WER, ins/del/sub) at the top, then per
    utterance its counts, REF, HYP and alignment, then substitution/deletion/insertion counts."""
    path = Path(path)
    atomic_write_text(path, format_errors(results, title))
    return path
