"""The bundled mini corpus: read sentences synthesized by espeak-ng, in LibriSpeech layout.

A "speaker" is an espeak-ng English voice + a voice variant + a pitch + a speed + a level,
e.g. ``en-gb-x-rp+f3 -p 55 -s 160``. The corpus is written as the real LibriSpeech is::

    <out_dir>/LibriSpeech/<split>/<spk>/<chapter>/<spk>-<chapter>-<utt:04d>.flac   (16 kHz mono)
    <out_dir>/LibriSpeech/<split>/<spk>/<chapter>/<spk>-<chapter>.trans.txt
    <out_dir>/LibriSpeech/SPEAKERS.TXT, speakers.json

with splits ``train-clean-100``, ``dev-clean`` and ``test-clean``, so the LibriSpeech recipe
(:func:`asrq.data.prepare.prepare_librispeech`) reads it unchanged. Held-out rules:
dev and test sentences never occur in train, and every dev / test speaker is a
(voice, variant) combination that no train speaker uses (each base voice and each variant
alone may occur in train). Everything is drawn from ``SynthConfig.seed``: the same config gives
the same files, texts and audio bytes (sox runs with ``-R``, no dither).

Re-running with the same config resumes / skips (``.asrq_synth.json`` in the corpus folder
holds the config hash); a different config on an existing corpus is an error unless
``force=True``, which deletes the old corpus first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import shutil
import subprocess
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf
from tqdm.auto import tqdm

from asrq.config import SynthConfig
from asrq.data.text import load_sentences
from asrq.utils.io import AsrqError, atomic_path, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
TRAIN_SPLIT, DEV_SPLIT, TEST_SPLIT = "train-clean-100", "dev-clean", "test-clean"
MARKER = ".asrq_synth.json"
# Bump when the planning or the audio pipeline changes, so old corpora are not taken as current.
SYNTH_VERSION = 1

# espeak-ng's English voices of the gmw family (the mbrola ones need extra packages).
# fmt: skip below: a table, not one name per line
VOICES = (
    "en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan",
    "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
)  # fmt: skip
# espeak-ng voice variants (``espeak-ng --voices=variant``) that sound like a person talking;
# whisper, croak, robot and effect variants are left out. Value: sex for SPEAKERS.TXT.
# fmt: skip below: a table, not one name per line
VARIANTS = {
    "m1": "M", "m2": "M", "m3": "M", "m4": "M", "m5": "M", "m6": "M", "m7": "M", "m8": "M",
    "f1": "F", "f2": "F", "f3": "F", "f4": "F", "f5": "F",
    "Alex": "M", "Alicia": "F", "Andrea": "F", "Andy": "M", "Annie": "F", "adam": "M",
    "aunty": "F", "belinda": "F", "benjamin": "M", "caleb": "M", "david": "M", "ed": "M",
    "edward": "M", "Gene": "M", "Jacky": "M", "john": "M", "linda": "F", "Lee": "M",
    "max": "M", "Michael": "M", "Mike": "M", "norbert": "M", "paul": "M", "quincy": "M",
    "rob": "M", "robert": "M", "steph": "F", "travis": "M", "victor": "M", "anika": "F",
    "grandma": "F", "grandpa": "M",
}  # fmt: skip
PITCH_RANGE = (30, 70)  # espeak-ng -p, default 50
SPEED_RANGE = (135, 185)  # espeak-ng -s, words per minute, default 175
LEVEL_RANGE = (0.35, 0.8)  # linear gain applied by sox (also keeps peaks from clipping)
UTT_JITTER = (3, 6)  # per-utterance +- pitch, +- speed around the speaker's values


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker; ``voice_spec`` is what espeak-ng's ``-v`` gets."""

    id: int
    chapter: int
    split: str
    voice: str
    variant: str
    pitch: int
    speed: int
    level: float

    @property
    def voice_spec(self) -> str:
        return f"{self.voice}+{self.variant}"


@dataclass(frozen=True)
class Utterance:
    id: str  # <spk>-<chapter>-<utt:04d>
    text: str  # LibriSpeech style: upper case, letters, apostrophes, spaces
    speaker: Speaker
    pitch: int
    speed: int

    @property
    def rel_path(self) -> Path:
        """Audio path relative to the corpus folder."""
        s = self.speaker
        return Path(s.split) / str(s.id) / str(s.chapter) / f"{self.id}.flac"


def check_tools() -> dict[str, str]:
    """Return the paths of ``espeak-ng`` and ``sox``, or raise a clear :class:`AsrqError`."""
    found = {name: shutil.which(name) for name in ("espeak-ng", "sox")}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise AsrqError(
            f"{' and '.join(missing)} not found on PATH: the synthetic corpus needs them "
            "(Debian/Ubuntu: apt-get install espeak-ng sox)"
        )
    return {n: str(p) for n, p in found.items()}


def config_hash(cfg: SynthConfig) -> str:
    """Hash of everything that decides the corpus content: the config, the sentence file, the
    speaker tables and :data:`SYNTH_VERSION`."""
    blob = json.dumps(
        {
            "cfg": dataclasses.asdict(cfg),
            "sentences": load_sentences(),
            "voices": VOICES,
            "variants": VARIANTS,
            "ranges": [PITCH_RANGE, SPEED_RANGE, LEVEL_RANGE, UTT_JITTER],
            "version": SYNTH_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_corpus(cfg: SynthConfig) -> tuple[list[Speaker], list[Utterance]]:
    """Decide every speaker and utterance (no audio): a pure function of ``cfg``."""
    for name in ("train_utts_per_speaker", "eval_utts_per_speaker"):
        if not 1 <= getattr(cfg, name) <= 9999:
            raise AsrqError(f"data.synth.{name} must be in 1..9999 (4-digit utterance ids)")
    if not 1 <= cfg.min_words <= cfg.max_words:
        raise AsrqError("data.synth.min_words must be >= 1 and <= data.synth.max_words")
    rng = random.Random(cfg.seed)

    # Speakers: dev/test get unique (voice, variant) combinations never used by train.
    combos = [(v, var) for v in VOICES for var in VARIANTS]
    rng.shuffle(combos)
    n_eval = cfg.test_speakers + cfg.dev_speakers
    if n_eval >= len(combos):
        raise AsrqError(
            f"at most {len(combos) - 1} dev + test speakers are possible, asked {n_eval}"
        )
    test_combos = combos[: cfg.test_speakers]
    dev_combos = combos[cfg.test_speakers : n_eval]
    train_pool = combos[n_eval:]
    # More train speakers than combinations: combinations repeat with other pitch / speed.
    train_combos = [train_pool[i % len(train_pool)] for i in range(cfg.train_speakers)]

    speakers: list[Speaker] = []
    for split, split_combos in (
        (TRAIN_SPLIT, train_combos),
        (DEV_SPLIT, dev_combos),
        (TEST_SPLIT, test_combos),
    ):
        for voice, variant in split_combos:
            k = len(speakers)
            speakers.append(
                Speaker(
                    id=101 + k,
                    chapter=1001 + k,
                    split=split,
                    voice=voice,
                    variant=variant,
                    pitch=rng.randint(*PITCH_RANGE),
                    speed=rng.randint(*SPEED_RANGE),
                    level=round(rng.uniform(*LEVEL_RANGE), 3),
                )
            )

    # Sentences: dev/test first from the shuffled pool, train from the rest.
    pool = load_sentences(cfg.min_words, cfg.max_words)
    rng.shuffle(pool)
    n_dev = cfg.dev_speakers * cfg.eval_utts_per_speaker
    n_test = cfg.test_speakers * cfg.eval_utts_per_speaker
    if len(pool) < n_dev + n_test + 1:
        raise AsrqError(
            f"only {len(pool)} shipped sentences have {cfg.min_words}..{cfg.max_words} words; "
            f"dev + test need {n_dev + n_test} plus some for train"
        )
    texts = {DEV_SPLIT: iter(pool[:n_dev]), TEST_SPLIT: iter(pool[n_dev : n_dev + n_test])}
    train_pool_s = pool[n_dev + n_test :]
    n_train = cfg.train_speakers * cfg.train_utts_per_speaker
    train_texts: list[str] = []
    while len(train_texts) < n_train:  # cycles (reshuffled) when train needs more sentences
        chunk = list(train_pool_s)
        if train_texts:
            rng.shuffle(chunk)
        train_texts += chunk
    texts[TRAIN_SPLIT] = iter(train_texts[:n_train])

    utts: list[Utterance] = []
    for spk in speakers:
        n = cfg.train_utts_per_speaker if spk.split == TRAIN_SPLIT else cfg.eval_utts_per_speaker
        for i in range(n):
            uid = f"{spk.id}-{spk.chapter}-{i:04d}"
            urng = random.Random(f"{cfg.seed}-{uid}")
            utts.append(
                Utterance(
                    id=uid,
                    text=next(texts[spk.split]),
                    speaker=spk,
                    pitch=min(99, max(0, spk.pitch + urng.randint(-UTT_JITTER[0], UTT_JITTER[0]))),
                    speed=spk.speed + urng.randint(-UTT_JITTER[1], UTT_JITTER[1]),
                )
            )
    return speakers, utts


def synthesize_utterance(
    utt: Utterance, out_path: Path, tools: dict[str, str] | None = None
) -> float:
    """Write one utterance as 16 kHz mono 16-bit FLAC to ``out_path`` (atomically); returns
    its duration in seconds."""
    tools = tools or check_tools()
    s = utt.speaker
    # espeak-ng reads all-caps words as acronyms at times: give it lower case.
    cmd = [
        tools["espeak-ng"],
        "-v",
        s.voice_spec,
        "-p",
        str(utt.pitch),
        "-s",
        str(utt.speed),
        "--stdout",
        utt.text.lower(),
    ]
    wav = subprocess.run(cmd, capture_output=True, check=False)
    if wav.returncode != 0 or len(wav.stdout) <= 44:
        err = wav.stderr.decode().strip() or f"exit code {wav.returncode}"
        raise AsrqError(f"espeak-ng failed for {utt.id} ({' '.join(cmd[1:7])}): {err}")
    with atomic_path(out_path) as tmp:
        sox = [tools["sox"], "-R", "-V1", "-v", str(s.level), "-t", "wav", "-", "-D"]
        sox += ["-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(tmp)]
        res = subprocess.run(sox, input=wav.stdout, capture_output=True, check=False)
        if res.returncode != 0:
            raise AsrqError(f"sox failed for {utt.id}: {res.stderr.decode().strip()}")
    return sf.info(str(out_path)).frames / SAMPLE_RATE


def synthesize_corpus(
    out_dir: str | Path,
    cfg: SynthConfig,
    num_jobs: int = 2,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Synthesize the corpus under ``<out_dir>/LibriSpeech`` and return that folder.

    ``num_jobs`` espeak-ng/sox pipelines run at once. Finished files are kept on a re-run with
    the same ``cfg``; a corpus made with another config raises :class:`AsrqError` unless
    ``force`` (then it is deleted and made anew). A summary (utterances and hours per split,
    wall time) is stored in ``.asrq_synth.json``; read it with :func:`read_synth_info`.
    """
    tools = check_tools()
    corpus = Path(out_dir) / "LibriSpeech"
    marker = corpus / MARKER
    h = config_hash(cfg)
    if corpus.exists() and any(corpus.iterdir()):
        old = _read_marker(marker)
        if old is not None and old.get("hash") == h:
            if old.get("complete"):
                log.info("%s: complete for this config, skipping", corpus)
                return corpus
        elif not force:
            what = (
                "a different synth config"
                if old is not None
                else "files not made by `asrq data synth`"
            )
            raise AsrqError(
                f"{corpus}: already holds {what}; use --force to replace it or pick another --out"
            )
        elif old is None:
            raise AsrqError(
                f"{corpus}: holds files not made by `asrq data synth`; not deleting them, pick "
                "another --out"
            )
        else:
            log.warning("%s: replacing a corpus made with another config", corpus)
            shutil.rmtree(corpus)

    speakers, utts = plan_corpus(cfg)
    corpus.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"hash": h, "complete": False, "config": dataclasses.asdict(cfg)}
    atomic_write_json(marker, info)

    t0 = time.time()
    durations: dict[str, float] = {}

    def work(u: Utterance) -> tuple[str, float]:
        path = corpus / u.rel_path
        if path.is_file():  # written atomically, so an existing file is complete
            return u.id, sf.info(str(path)).frames / SAMPLE_RATE
        return u.id, synthesize_utterance(u, path, tools)

    # Threads are enough: the work runs in the espeak-ng / sox processes they start.
    ex = ThreadPoolExecutor(max(1, num_jobs))
    try:
        bar = tqdm(
            ex.map(work, utts),
            total=len(utts),
            desc="Synthesizing",
            unit="utt",
            disable=not progress,
        )
        for uid, dur in bar:
            durations[uid] = dur
    finally:
        ex.shutdown(wait=True, cancel_futures=True)  # on an error, do not finish the rest

    by_chapter: dict[Path, list[Utterance]] = defaultdict(list)
    for u in utts:
        by_chapter[corpus / u.rel_path.parent].append(u)
    for folder, chapter_utts in by_chapter.items():
        s = chapter_utts[0].speaker
        lines = "".join(f"{u.id} {u.text}\n" for u in sorted(chapter_utts, key=lambda u: u.id))
        atomic_write_text(folder / f"{s.id}-{s.chapter}.trans.txt", lines)

    minutes: dict[int, float] = defaultdict(float)
    summary: dict[str, dict[str, float]] = {}
    for u in utts:
        minutes[u.speaker.id] += durations[u.id] / 60
        sp = summary.setdefault(u.speaker.split, {"speakers": 0, "utterances": 0, "hours": 0.0})
        sp["utterances"] += 1
        sp["hours"] += durations[u.id] / 3600
    for s in speakers:
        summary[s.split]["speakers"] += 1
    _write_speakers(corpus, speakers, minutes)
    info.update(
        complete=True,
        summary={k: {**v, "hours": round(v["hours"], 4)} for k, v in summary.items()},
        total_hours=round(sum(durations.values()) / 3600, 4),
        synth_seconds=round(time.time() - t0, 1),
        num_jobs=num_jobs,
        tools=_tool_versions(tools),
    )
    atomic_write_json(marker, info)
    return corpus


def read_synth_info(corpus_dir: str | Path) -> dict[str, Any]:
    """The ``.asrq_synth.json`` of a synthesized corpus (config, hash, per-split summary)."""
    info = _read_marker(Path(corpus_dir) / MARKER)
    if info is None:
        raise AsrqError(f"{corpus_dir}: no {MARKER}; not a corpus made by `asrq data synth`")
    return info


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_speakers(corpus: Path, speakers: list[Speaker], minutes: dict[int, float]) -> None:
    """SPEAKERS.TXT in LibriSpeech's format plus speakers.json with the espeak-ng settings."""
    lines = [
        "; Synthetic speakers made by `asrq data synth` with espeak-ng (see speakers.json)\n",
        ";ID  |SEX| SUBSET           |MINUTES| NAME\n",
    ]
    for s in speakers:
        name = f"espeak-ng {s.voice_spec} p{s.pitch} s{s.speed}"
        lines.append(
            f"{s.id:<5}| {VARIANTS[s.variant]} | {s.split:<17}| {minutes[s.id]:5.2f} | {name}\n"
        )
    atomic_write_text(corpus / "SPEAKERS.TXT", "".join(lines))
    atomic_write_json(
        corpus / "speakers.json", {str(s.id): dataclasses.asdict(s) for s in speakers}
    )


def _tool_versions(tools: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, exe in tools.items():
        res = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
        out[name] = (
            (res.stdout or res.stderr).strip().splitlines()[0]
            if (res.stdout or res.stderr)
            else "?"
        )
    return out
