"""The bundled mini corpus: read sentences from three speech synthesizers, in LibriSpeech layout.

A "speaker" is an engine + voice + voice variant + pitch + speed + level, e.g. espeak-ng
``en-gb-x-rp+f3 -p 55 -s 160`` or flite ``awb`` shifted +150 cents at 95% rate (the engines,
their voices and variants: :mod:`asrq.data.engines`). The corpus is written as the real
LibriSpeech is::

    <out_dir>/LibriSpeech/<split>/<spk>/<chapter>/<spk>-<chapter>-<utt:04d>.flac   (16 kHz mono)
    <out_dir>/LibriSpeech/<split>/<spk>/<chapter>/<spk>-<chapter>.trans.txt
    <out_dir>/LibriSpeech/SPEAKERS.TXT, speakers.json

with splits ``train-clean-100``, ``dev-clean``, ``test-clean`` and ``test-other`` (LibriSpeech's
official split names, so :func:`asrq.data.prepare.prepare_librispeech` and lhotse's recipe read
it unchanged). Held-out rules:

- train, dev-clean and test-clean speakers are espeak-ng and flite voices; test-other is all
  festival, an engine never heard in train or dev;
- every dev / test-clean speaker is an (engine, voice, variant) combination that no train
  speaker uses (each base voice and each variant alone may occur in train);
- dev and test sentences never occur in train (checked in :func:`plan_corpus`).

Sentences come from two shipped sources (:func:`asrq.data.text.load_sentences`): King James
Bible clauses and, for ``everyday_share`` of the utterances, WordNet's everyday English
examples. Everything is drawn from ``SynthConfig.seed``: the same config gives the same files,
texts and audio bytes (sox runs with ``-R``, no dither).

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
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf
from tqdm.auto import tqdm

from asrq.config import SynthConfig
from asrq.data import engines as E
from asrq.data.text import SOURCES, load_sentences
from asrq.utils.io import AsrqError, atomic_path, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
TRAIN_SPLIT, DEV_SPLIT, TEST_SPLIT = "train-clean-100", "dev-clean", "test-clean"
TEST_OTHER_SPLIT = "test-other"
EVAL_SPLITS = (DEV_SPLIT, TEST_SPLIT, TEST_OTHER_SPLIT)
MARKER = ".asrq_synth.json"
# Bump when the planning or the audio pipeline changes, so old corpora are not taken as current.
SYNTH_VERSION = 2

# Kept for callers of the espeak-ng-only version.
VOICES, VARIANTS = E.ESPEAK_VOICES, E.ESPEAK_VARIANTS
LEVEL_RANGE = E.LEVEL_RANGE


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker. ``pitch`` / ``speed``: espeak-ng's ``-p`` / ``-s``, or for flite
    and festival a pitch shift in cents / the speaking rate in percent."""

    id: int
    chapter: int
    split: str
    voice: str
    variant: str
    pitch: int
    speed: int
    level: float
    engine: str = E.ESPEAK

    @property
    def voice_spec(self) -> str:
        """``en-gb+m3`` (espeak-ng voice+variant), ``awb-200c`` (flite / festival voice and
        its pitch-shift variant)."""
        return (
            f"{self.voice}+{self.variant}" if self.engine == E.ESPEAK else self.voice + self.variant
        )


@dataclass(frozen=True)
class Utterance:
    id: str  # <spk>-<chapter>-<utt:04d>
    text: str  # LibriSpeech style: upper case, letters, apostrophes, spaces
    speaker: Speaker
    pitch: int
    speed: int
    source: str = "kjv"  # sentence source (asrq.data.text.SOURCES)

    @property
    def rel_path(self) -> Path:
        """Audio path relative to the corpus folder."""
        s = self.speaker
        return Path(s.split) / str(s.id) / str(s.chapter) / f"{self.id}.flac"


def needed_engines(cfg: SynthConfig) -> tuple[str, ...]:
    """The engines a corpus of ``cfg`` uses."""
    out = [E.ESPEAK]
    if cfg.flite_share > 0:
        out.append(E.FLITE)
    if cfg.test_other_speakers > 0:
        out.append(E.FESTIVAL)
    return tuple(out)


def check_tools(cfg: SynthConfig | None = None) -> dict[str, str]:
    """Paths of sox and the engines ``cfg`` needs (all three without ``cfg``), or a clear
    :class:`AsrqError` naming the Debian packages to install."""
    return E.check_tools(
        needed_engines(cfg) if cfg is not None else (E.ESPEAK, E.FLITE, E.FESTIVAL)
    )


def config_hash(cfg: SynthConfig) -> str:
    """Hash of everything that decides the corpus content: the config, the sentence files, the
    engine tables and :data:`SYNTH_VERSION`."""
    blob = json.dumps(
        {
            "cfg": dataclasses.asdict(cfg),
            "sentences": {src: load_sentences(source=src) for src in SOURCES},
            "voices": [E.ESPEAK_VOICES, E.FLITE_VOICES, E.FLITE_F0, E.FESTIVAL_VOICES],
            "variants": [E.ESPEAK_VARIANTS, E.SHIFT_VARIANTS],
            "ranges": [E.RANGES, E.LEVEL_RANGE],
            "version": SYNTH_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _split_engines(cfg: SynthConfig) -> dict[str, list[str]]:
    """Engine of each speaker slot per split: the first ``round(flite_share * n)`` are flite."""
    out = {}
    for split, n in (
        (TRAIN_SPLIT, cfg.train_speakers),
        (DEV_SPLIT, cfg.dev_speakers),
        (TEST_SPLIT, cfg.test_speakers),
    ):
        n_flite = round(cfg.flite_share * n)
        out[split] = [E.FLITE] * n_flite + [E.ESPEAK] * (n - n_flite)
    out[TEST_OTHER_SPLIT] = [E.FESTIVAL] * cfg.test_other_speakers
    return out


def _plan_speakers(cfg: SynthConfig, rng: random.Random) -> list[Speaker]:
    """Speakers of every split; dev / test-clean get (engine, voice, variant) combinations that
    no train speaker uses, test-other gets festival ones."""
    slots = _split_engines(cfg)
    assigned: dict[str, list[tuple[str, str, str]]] = {s: [] for s in slots}
    for engine in (E.ESPEAK, E.FLITE, E.FESTIVAL):
        pool = E.shuffled_combos(engine, rng)
        n_per = {split: e.count(engine) for split, e in slots.items()}
        n_eval = sum(n_per[s] for s in EVAL_SPLITS)
        if n_eval == 0 and n_per[TRAIN_SPLIT] == 0:
            continue
        most = len(pool) - (1 if n_per[TRAIN_SPLIT] else 0)  # train needs one pair left
        if n_eval > most:
            raise AsrqError(
                f"{engine}: at most {most} held-out dev/test speakers are possible "
                f"({len(pool)} voice x variant pairs), asked {n_eval}"
            )
        k = 0
        for split in EVAL_SPLITS:
            assigned[split] += [(engine, *c) for c in pool[k : k + n_per[split]]]
            k += n_per[split]
        train_pool = pool[k:]
        # More train speakers than combinations: combinations repeat with other pitch / speed.
        assigned[TRAIN_SPLIT] += [
            (engine, *train_pool[i % len(train_pool)]) for i in range(n_per[TRAIN_SPLIT])
        ]
    speakers: list[Speaker] = []
    for split in (TRAIN_SPLIT, DEV_SPLIT, TEST_SPLIT, TEST_OTHER_SPLIT):
        for engine, voice, variant in assigned[split]:
            pitch_range, speed_range, _ = E.RANGES[engine]
            k = len(speakers)
            speakers.append(
                Speaker(
                    id=101 + k,
                    chapter=1001 + k,
                    split=split,
                    voice=voice,
                    variant=variant,
                    pitch=E.base_pitch(engine, variant) + rng.randint(*pitch_range),
                    speed=rng.randint(*speed_range),
                    level=round(rng.uniform(*E.LEVEL_RANGE), 3),
                    engine=engine,
                )
            )
    return speakers


def plan_corpus(cfg: SynthConfig) -> tuple[list[Speaker], list[Utterance]]:
    """Decide every speaker and utterance (no audio): a pure function of ``cfg``."""
    for name in ("train_utts_per_speaker", "eval_utts_per_speaker"):
        if not 1 <= getattr(cfg, name) <= 9999:
            raise AsrqError(f"data.synth.{name} must be in 1..9999 (4-digit utterance ids)")
    if not 1 <= cfg.min_words <= cfg.max_words:
        raise AsrqError("data.synth.min_words must be >= 1 and <= data.synth.max_words")
    rng = random.Random(cfg.seed)
    speakers = _plan_speakers(cfg, rng)

    # Each utterance slot draws its sentence source; then dev/test take sentences first from
    # each shuffled pool and train the rest.
    slots: list[tuple[Speaker, str, str]] = []  # (speaker, uid, source)
    for spk in speakers:
        n = cfg.train_utts_per_speaker if spk.split == TRAIN_SPLIT else cfg.eval_utts_per_speaker
        for i in range(n):
            uid = f"{spk.id}-{spk.chapter}-{i:04d}"
            src = "everyday" if rng.random() < cfg.everyday_share else "kjv"
            slots.append((spk, uid, src))
    pools: dict[str, list[str]] = {}
    seen: set[str] = set()
    for src in ("kjv", "everyday"):  # a sentence in both sources belongs to the first
        pool = [t for t in load_sentences(cfg.min_words, cfg.max_words, src) if t not in seen]
        seen.update(pool)
        rng.shuffle(pool)
        pools[src] = pool
    need_eval = {
        src: sum(1 for s, _, x in slots if x == src and s.split != TRAIN_SPLIT) for src in pools
    }
    texts: dict[tuple[str, str], Any] = {}
    for src, pool in pools.items():
        n_eval = need_eval[src]
        n_train = sum(1 for s, _, x in slots if x == src and s.split == TRAIN_SPLIT)
        if len(pool) < n_eval + (1 if n_train else 0):
            raise AsrqError(
                f"only {len(pool)} shipped {src} sentences have {cfg.min_words}..{cfg.max_words} "
                f"words; dev + test need {n_eval} plus some for train"
            )
        texts[(src, "eval")] = iter(pool[:n_eval])
        train_pool = pool[n_eval:]
        train_texts: list[str] = []
        while len(train_texts) < n_train:  # cycles (reshuffled) when train needs more sentences
            chunk = list(train_pool)
            if train_texts:
                rng.shuffle(chunk)
            train_texts += chunk
        texts[(src, "train")] = iter(train_texts[:n_train])

    utts: list[Utterance] = []
    for spk, uid, src in slots:
        _, _, (jp, js) = E.RANGES[spk.engine]
        urng = random.Random(f"{cfg.seed}-{uid}")
        pitch = spk.pitch + urng.randint(-jp, jp)
        if spk.engine == E.ESPEAK:
            pitch = min(99, max(0, pitch))
        text = next(texts[(src, "train" if spk.split == TRAIN_SPLIT else "eval")])
        utts.append(Utterance(uid, text, spk, pitch, spk.speed + urng.randint(-js, js), src))
    _check_held_out(utts)
    return speakers, utts


def _check_held_out(utts: list[Utterance]) -> None:
    """The held-out rules, checked on every plan (an :class:`AsrqError` if one is broken)."""
    train = {u.text for u in utts if u.speaker.split == TRAIN_SPLIT}
    leaked = sorted({u.text for u in utts if u.speaker.split != TRAIN_SPLIT} & train)
    if leaked:
        raise AsrqError(
            f"synth plan: {len(leaked)} dev/test sentences in train, e.g. {leaked[0]!r}"
        )
    train_combos = {
        (u.speaker.engine, u.speaker.voice, u.speaker.variant)
        for u in utts
        if u.speaker.split == TRAIN_SPLIT
    }
    for u in utts:
        s = u.speaker
        if s.split != TRAIN_SPLIT and (s.engine, s.voice, s.variant) in train_combos:
            raise AsrqError(f"synth plan: {s.split} speaker {s.id} uses a train voice combination")
        if (s.engine == E.HELD_OUT_ENGINE) != (s.split == TEST_OTHER_SPLIT):
            raise AsrqError(f"synth plan: speaker {s.id} ({s.engine}) in {s.split}")


def _to_flac(tools: dict[str, str], wav: bytes | Path, out_path: Path, utt: Utterance) -> float:
    """sox: level, the engine's effects, 16 kHz mono 16-bit FLAC written atomically."""
    s = utt.speaker
    src = ["-t", "wav", "-"] if isinstance(wav, bytes) else [str(wav)]
    with atomic_path(out_path) as tmp:
        sox = [
            tools["sox"],
            "-R",
            "-V1",
            "-v",
            str(s.level),
            *src,
            "-D",
            "-r",
            str(SAMPLE_RATE),
            "-c",
            "1",
            "-b",
            "16",
            str(tmp),
            *E.sox_effects(s.engine, utt.pitch, utt.speed),
        ]
        res = subprocess.run(
            sox, input=wav if isinstance(wav, bytes) else None, capture_output=True, check=False
        )
        if res.returncode != 0:
            raise AsrqError(f"sox failed for {utt.id}: {res.stderr.decode().strip()}")
    return sf.info(str(out_path)).frames / SAMPLE_RATE


def synthesize_utterance(
    utt: Utterance, out_path: Path, tools: dict[str, str] | None = None
) -> float:
    """Write one espeak-ng or flite utterance as 16 kHz mono 16-bit FLAC to ``out_path``
    (atomically); returns its duration in seconds."""
    s = utt.speaker
    tools = tools or E.check_tools((s.engine,))
    cmd = E.wave_command(
        tools, s.engine, s.voice, s.variant, utt.pitch, utt.speed, utt.text.lower()
    )
    wav = subprocess.run(cmd, capture_output=True, check=False)
    if wav.returncode != 0 or len(wav.stdout) <= 44:
        err = wav.stderr.decode().strip() or f"exit code {wav.returncode}"
        raise AsrqError(f"{s.engine} failed for {utt.id} ({' '.join(cmd[1:7])}): {err}")
    return _to_flac(tools, wav.stdout, out_path, utt)


def synthesize_festival(
    utts: list[Utterance], corpus: Path, tools: dict[str, str] | None = None
) -> list[tuple[str, float]]:
    """Say ``utts`` (all of one festival speaker) in one festival process, then write each as
    FLAC under ``corpus``; returns ``[(utt id, seconds)]``."""
    if not utts:
        return []
    tools = tools or E.check_tools((E.FESTIVAL,))
    voice = utts[0].speaker.voice
    with tempfile.TemporaryDirectory(prefix="asrq_festival_") as tmp:
        items = [(u.text.lower(), str(Path(tmp) / f"{u.id}.wav")) for u in utts]
        script = Path(tmp) / "say.scm"
        script.write_text(E.festival_script(voice, items))
        res = subprocess.run(
            [tools[E.FESTIVAL], "--batch", str(script)],
            capture_output=True,
            check=False,
            timeout=60 + 10 * len(utts),
        )
        out = []
        for u, (_, wav) in zip(utts, items, strict=True):
            if res.returncode != 0 or not Path(wav).is_file() or Path(wav).stat().st_size <= 44:
                err = res.stderr.decode().strip()[-300:] or f"exit code {res.returncode}"
                raise AsrqError(f"festival ({voice}) failed for {u.id}: {err}")
            out.append((u.id, _to_flac(tools, Path(wav), corpus / u.rel_path, u)))
    return out


def synthesize_corpus(
    out_dir: str | Path,
    cfg: SynthConfig,
    num_jobs: int = 2,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Synthesize the corpus under ``<out_dir>/LibriSpeech`` and return that folder.

    ``num_jobs`` synthesizer/sox pipelines run at once (a festival job says all utterances of
    one speaker). Finished files are kept on a re-run with
    the same ``cfg``; a corpus made with another config raises :class:`AsrqError` unless
    ``force`` (then it is deleted and made anew). A summary (utterances and hours per split,
    wall time) is stored in ``.asrq_synth.json``; read it with :func:`read_synth_info`.
    """
    tools = check_tools(cfg)
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
                f"{corpus}: holds files not made by `asrq data synth`; not deleting them, "
                "pick another --out"
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

    # Jobs: one per espeak-ng / flite utterance, one per festival speaker (its slow start is
    # paid once); festival jobs first, as they are the longest.
    jobs: list[list[Utterance]] = []
    by_speaker: dict[int, list[Utterance]] = defaultdict(list)
    for u in utts:
        if u.speaker.engine == E.FESTIVAL:
            by_speaker[u.speaker.id].append(u)
        else:
            jobs.append([u])
    jobs = list(by_speaker.values()) + jobs
    busy: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # engine: [seconds, utts]

    def work(job: list[Utterance]) -> list[tuple[str, float]]:
        done = [(u.id, corpus / u.rel_path) for u in job]
        # written atomically, so an existing file is complete
        out = {uid: sf.info(str(p)).frames / SAMPLE_RATE for uid, p in done if p.is_file()}
        todo = [u for u in job if u.id not in out]
        t = time.time()
        if todo and todo[0].speaker.engine == E.FESTIVAL:
            out.update(synthesize_festival(todo, corpus, tools))
        elif todo:
            out[todo[0].id] = synthesize_utterance(todo[0], corpus / todo[0].rel_path, tools)
        if todo:
            b = busy[todo[0].speaker.engine]
            b[0] += time.time() - t
            b[1] += len(todo)
        return [(u.id, out[u.id]) for u in job]

    # Threads are enough: the work runs in the synthesizer / sox processes they start.
    ex = ThreadPoolExecutor(max(1, num_jobs))
    try:
        with tqdm(total=len(utts), desc="Synthesizing", unit="utt", disable=not progress) as bar:
            for res in ex.map(work, jobs):
                durations.update(res)
                bar.update(len(res))
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
    engines: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for s in speakers:
        summary[s.split]["speakers"] += 1
        engines[s.split][s.engine] += 1
    _write_speakers(corpus, speakers, minutes)
    info.update(
        complete=True,
        summary={k: {**v, "hours": round(v["hours"], 4)} for k, v in summary.items()},
        speakers_per_engine={k: dict(v) for k, v in engines.items()},
        total_hours=round(sum(durations.values()) / 3600, 4),
        synth_seconds=round(time.time() - t0, 1),
        num_jobs=num_jobs,
        # per engine: utterances made in this call per second of one job's time (one core)
        engine_utts_per_job_second={
            e: round(n / max(sec, 1e-9), 2) for e, (sec, n) in sorted(busy.items())
        },
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
    """SPEAKERS.TXT in LibriSpeech's format plus speakers.json with the engine settings."""
    lines = [
        "; Synthetic speakers made by `asrq data synth` with espeak-ng, flite and festival "
        "(see speakers.json)\n",
        ";ID  |SEX| SUBSET           |MINUTES| NAME\n",
    ]
    for s in speakers:
        name = f"{s.engine} {s.voice_spec} p{s.pitch} s{s.speed}"
        sex = E.sex(s.engine, s.voice, s.variant)
        lines.append(f"{s.id:<5}| {sex} | {s.split:<17}| {minutes[s.id]:5.2f} | {name}\n")
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
