"""Text normalization to LibriSpeech style, and the builders of the shipped sentence files.

LibriSpeech transcripts are upper case letters, apostrophes and single spaces, no digits and
no punctuation. :func:`normalize_text` maps free text to that form. Two sentence sources ship in
``asrq/resources/`` (see its README for origin and license):

- ``kjv``: ``kjv_sentences.txt``, clauses of the King James Bible (public domain), made by
  :func:`build_kjv_sentences` from the Debian package ``bible-kjv``;
- ``everyday``: ``wordnet_sentences.txt``, the usage examples of WordNet 3.0 ("She sighed
  sadly", "I shall never forget this day"), everyday modern English under the WordNet 3.0
  license, made by :func:`build_wordnet_sentences` from the Debian package ``wordnet-base``.

Both builders run at development time (``python -m asrq.data.text`` with the two packages
installed); at run time only the shipped files are read, through :func:`load_sentences`.
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
# Sentence sources: name -> shipped file in asrq/resources.
SOURCES = {"kjv": SENTENCES_RESOURCE, "everyday": "wordnet_sentences.txt"}
WORDNET_DIR = Path("/usr/share/wordnet")  # Debian package wordnet-base

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


def load_sentences(min_words: int = 1, max_words: int = 10_000, source: str = "kjv") -> list[str]:
    """The shipped sentences of ``source`` (``kjv``: King James Bible; ``everyday``: WordNet
    usage examples; see ``asrq/resources/README.md``) whose word count is within
    ``min_words..max_words``, in file order, duplicates removed."""
    if source not in SOURCES:
        raise AsrqError(f"unknown sentence source {source!r}; choose one of {sorted(SOURCES)}")
    text = resources.files("asrq").joinpath("resources", SOURCES[source]).read_text()
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


def wordnet_examples(wordnet_dir: str | Path = WORDNET_DIR) -> list[str]:
    """The quoted usage examples of every WordNet 3.0 synset gloss (``data.noun``, ``data.verb``,
    ``data.adj``, ``data.adv`` of Debian's ``wordnet-base``), in file order. Development-time
    only."""
    wordnet_dir = Path(wordnet_dir)
    out: list[str] = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = wordnet_dir / f"data.{pos}"
        if not path.is_file():
            raise AsrqError(
                f"{path}: not found; apt-get install wordnet-base (only needed to rebuild "
                "the everyday sentence file)"
            )
        for line in path.read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:  # license header lines start with 2 spaces
                continue
            out += re.findall(r'"([^"]+)"', line.split("|", 1)[1])
    return out


def build_wordnet_sentences(
    out_path: str | Path,
    num_lines: int = 15000,
    min_words: int = 3,
    max_words: int = 25,
    seed: int = 0,
    wordnet_dir: str | Path = WORDNET_DIR,
) -> int:
    """Write ``num_lines`` distinct normalized WordNet usage examples (chosen at random with
    ``seed``, written in WordNet file order) to ``out_path``; returns the number written.
    Examples with digits are dropped (see :func:`normalize_text`)."""
    seen: set[str] = set()
    examples: list[str] = []
    for ex in wordnet_examples(wordnet_dir):
        n = normalize_text(ex)
        if n and min_words <= len(n.split()) <= max_words and n not in seen:
            seen.add(n)
            examples.append(n)
    rng = random.Random(seed)
    keep = sorted(rng.sample(range(len(examples)), min(num_lines, len(examples))))
    atomic_write_text(out_path, "".join(examples[i] + "\n" for i in keep))
    return len(keep)


if __name__ == "__main__":  # development-time: regenerate the shipped files
    res_dir = Path(__file__).resolve().parents[1] / "resources"
    for source, build in (("kjv", build_kjv_sentences), ("everyday", build_wordnet_sentences)):
        target = res_dir / SOURCES[source]
        n = build(target)
        print(f"wrote {n} sentences to {target} ({target.stat().st_size / 1e6:.2f} MB)")
