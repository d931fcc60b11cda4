"""Text normalization to LibriSpeech style, and the builder of the shipped sentence file.

LibriSpeech transcripts are upper case letters, apostrophes and single spaces, no digits and
no punctuation. :func:`normalize_text` maps free text to that form. :func:`build_kjv_sentences`
regenerated ``asrq/resources/kjv_sentences.txt`` from the Debian package ``bible-kjv`` at
development time (run ``python -m asrq.data.text`` with the package installed); at run time
only the shipped file is read, through :func:`load_sentences`.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from asrq.utils.io import AsrqError, atomic_write_text

SENTENCES_RESOURCE = "kjv_sentences.txt"

_NON_LETTER = re.compile(r"[^A-Z' ]+")
_SPACES = re.compile(r" +")
_STRAY_APOSTROPHE = re.compile(r"(?<![A-Z])'|'(?![A-Z])")
_STRONG_BREAK = re.compile(r"[.?!;:()]|--")


def normalize_text(text: str) -> str:
    """Upper-case ``text`` and keep only letters, in-word apostrophes and single spaces.

    Hyphens and other punctuation become word breaks (``God-ward`` -> ``GOD WARD``).
    Returns ``""`` when the text holds a digit, since digits cannot be written out here
    without guessing how they are read.
    """
    if any(ch.isdigit() for ch in text):
        return ""
    up = text.upper().replace("\u2019", "'")
    up = _NON_LETTER.sub(" ", up)
    up = _STRAY_APOSTROPHE.sub(" ", up)
    return _SPACES.sub(" ", up).strip()


def split_clauses(text: str, min_words: int, max_words: int) -> list[str]:
    """Split free text into normalized clauses of ``min_words..max_words`` words.

    Breaks at ``. ? ! ; : ( ) --``; a clause longer than ``max_words`` is cut at its commas
    into runs packed up to ``max_words``; a piece shorter than ``min_words`` is appended to
    the previous piece when that stays within ``max_words``, otherwise dropped.
    """
    pieces: list[list[str]] = []
    for segment in _STRONG_BREAK.split(text):
        words = normalize_text(segment).split()
        if not words:
            continue
        if len(words) <= max_words:
            parts = [words]
        else:
            parts = []
            run: list[str] = []
            for sub in segment.split(","):
                sub_words = normalize_text(sub).split()
                if len(run) + len(sub_words) <= max_words:
                    run += sub_words
                else:
                    if run:
                        parts.append(run)
                    run = sub_words if len(sub_words) <= max_words else []
            if run:
                parts.append(run)
        for part in parts:
            if len(part) < min_words and pieces and len(pieces[-1]) + len(part) <= max_words:
                pieces[-1] = pieces[-1] + part
            else:
                pieces.append(part)
    return [" ".join(p) for p in pieces if min_words <= len(p) <= max_words]


def load_sentences(min_words: int = 1, max_words: int = 10_000) -> list[str]:
    """The shipped public-domain sentences (King James Bible, see ``asrq/resources/README.md``)
    whose word count is within ``min_words..max_words``, in file order, duplicates removed."""
    text = resources.files("asrq").joinpath("resources", SENTENCES_RESOURCE).read_text()
    seen: set[str] = set()
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line and line not in seen and min_words <= len(line.split()) <= max_words:
            seen.add(line)
            out.append(line)
    return out


def kjv_verses() -> list[str]:
    """All verses of the King James Bible as printed by Debian's ``/usr/bin/bible``
    (package ``bible-kjv``). Development-time only."""
    exe = shutil.which("bible")
    if exe is None:
        raise AsrqError(
            "`bible` not found: apt-get install bible-kjv (only needed to rebuild the sentence "
            "file)"
        )
    out = subprocess.run(
        [exe, "-l", "100000", "gen1:1-rev22:21"], capture_output=True, text=True, check=True
    ).stdout
    verses = []
    for line in out.splitlines():
        m = re.match(r"^\s+\d+\s+(.*)$", line)  # verse lines are indented; book headers are not
        if m:
            verses.append(m.group(1))
    return verses


def build_kjv_sentences(
    out_path: str | Path,
    num_lines: int = 15000,
    min_words: int = 3,
    max_words: int = 25,
    seed: int = 0,
) -> int:
    """Write ``num_lines`` distinct normalized KJV clauses (chosen at random with ``seed``,
    written in Bible order) to ``out_path``; returns the number written."""
    clauses: list[str] = []
    seen: set[str] = set()
    for verse in kjv_verses():
        for c in split_clauses(verse, min_words, max_words):
            if c not in seen:
                seen.add(c)
                clauses.append(c)
    keep = sorted(random.Random(seed).sample(range(len(clauses)), min(num_lines, len(clauses))))
    atomic_write_text(out_path, "".join(clauses[i] + "\n" for i in keep))
    return len(keep)


if __name__ == "__main__":  # development-time: regenerate the shipped file
    target = Path(__file__).resolve().parents[1] / "resources" / SENTENCES_RESOURCE
    n = build_kjv_sentences(target)
    print(f"wrote {n} sentences to {target} ({target.stat().st_size / 1e6:.2f} MB)")
