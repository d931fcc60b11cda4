"""The speech synthesizers behind ``asrq data synth``: their voices, variants and commands.

Three engines, all Debian packages:

- ``espeak-ng`` (formant synthesis): 8 English voices x 45 voice variants (``en-gb+m3``);
  a speaker's ``pitch`` is espeak-ng's ``-p`` (0..99) and ``speed`` its ``-s`` (words/minute).
- ``flite`` (CMU Flite 2.2, Debian ``flite``): voices ``kal``, ``kal16`` (diphone) and ``awb``,
  ``rms``, ``slt`` (clustergen); ``speed`` is the speaking rate in percent (flite's
  ``--setf duration_stretch=100/speed``) and ``pitch`` a shift in cents of the voice's mean F0
  (flite's ``--setf int_f0_target_mean=``, around :data:`FLITE_F0`).
- ``festival`` (Festival 2.5 with Debian ``festvox-kallpc16k``, ``festvox-kdlpc16k`` and
  ``festvox-us-slt-hts``): voices ``kal_diphone``, ``ked_diphone``, ``cmu_us_slt_arctic_hts``;
  ``speed`` in percent (sox ``tempo``), ``pitch`` a shift in cents (sox ``pitch``). Festival
  starts slowly (~1 s), so one process speaks all utterances of a speaker.

For flite and festival a voice *variant* is a pitch-shift step (:data:`SHIFT_VARIANTS`,
``-300c`` .. ``+300c``); the speaker's pitch jitters around it. Training and dev use
:data:`TRAIN_ENGINES`; festival (:data:`HELD_OUT_ENGINE`) is only ever heard in ``test-other``.
Note that two festival voices share their *recorded speaker* with a flite voice (kal, slt:
the same CMU recordings, different synthesis methods), so test-other holds out an engine and
its signal processing, not every human speaker behind it.
"""

from __future__ import annotations

import random
import shutil

from asrq.utils.io import AsrqError

ESPEAK, FLITE, FESTIVAL = "espeak-ng", "flite", "festival"
TRAIN_ENGINES = (ESPEAK, FLITE)
HELD_OUT_ENGINE = FESTIVAL

# espeak-ng's English voices of the gmw family (the mbrola ones need extra packages).
ESPEAK_VOICES = (
    "en-gb",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
# espeak-ng voice variants (``espeak-ng --voices=variant``) that sound like a person talking;
# whisper, croak, robot and effect variants are left out. Value: sex for SPEAKERS.TXT.
ESPEAK_VARIANTS = {
    "m1": "M",
    "m2": "M",
    "m3": "M",
    "m4": "M",
    "m5": "M",
    "m6": "M",
    "m7": "M",
    "m8": "M",
    "f1": "F",
    "f2": "F",
    "f3": "F",
    "f4": "F",
    "f5": "F",
    "Alex": "M",
    "Alicia": "F",
    "Andrea": "F",
    "Andy": "M",
    "Annie": "F",
    "adam": "M",
    "aunty": "F",
    "belinda": "F",
    "benjamin": "M",
    "caleb": "M",
    "david": "M",
    "ed": "M",
    "edward": "M",
    "Gene": "M",
    "Jacky": "M",
    "john": "M",
    "linda": "F",
    "Lee": "M",
    "max": "M",
    "Michael": "M",
    "Mike": "M",
    "norbert": "M",
    "paul": "M",
    "quincy": "M",
    "rob": "M",
    "robert": "M",
    "steph": "F",
    "travis": "M",
    "victor": "M",
    "anika": "F",
    "grandma": "F",
    "grandpa": "M",
}
FLITE_VOICES = {"kal": "M", "kal16": "M", "awb": "M", "rms": "M", "slt": "F"}
# Mean F0 (Hz) of each flite voice as it speaks by default (median of torchaudio's
# detect_pitch_frequency over a sentence, rounded): the base of the voice's pitch shift.
FLITE_F0 = {"kal": 95, "kal16": 95, "awb": 110, "rms": 100, "slt": 165}
FESTIVAL_VOICES = {"kal_diphone": "M", "ked_diphone": "M", "cmu_us_slt_arctic_hts": "F"}
# Pitch-shift variants of the flite / festival voices, in cents.
SHIFT_VARIANTS = {f"{c:+d}c": c for c in (-300, -200, -100, 0, 100, 200, 300)}

# Per engine: speaker pitch range, speaker speed range, per-utterance (pitch, speed) jitter.
# espeak-ng: -p and -s (words/minute); flite / festival: jitter in cents around the variant's
# shift, and the speaking rate in percent.
RANGES: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    ESPEAK: ((30, 70), (135, 185), (3, 6)),
    FLITE: ((-40, 40), (82, 118), (20, 3)),
    FESTIVAL: ((-40, 40), (82, 118), (20, 3)),
}
LEVEL_RANGE = (0.35, 0.8)  # linear gain applied by sox (also keeps peaks from clipping)

# Debian packages that provide each tool (for error messages and the Makefile).
PACKAGES = {
    ESPEAK: "espeak-ng",
    "sox": "sox",
    FLITE: "flite",
    FESTIVAL: "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts",
}


def voices(engine: str) -> dict[str, str]:
    """``{voice: sex}`` of ``engine`` (espeak-ng: the sex comes with the variant, so ``""``)."""
    if engine == ESPEAK:
        return {v: "" for v in ESPEAK_VOICES}
    if engine == FLITE:
        return FLITE_VOICES
    if engine == FESTIVAL:
        return FESTIVAL_VOICES
    raise AsrqError(f"unknown speech engine {engine!r}; choose one of {[ESPEAK, FLITE, FESTIVAL]}")


def variants(engine: str) -> list[str]:
    """Voice variant names of ``engine``."""
    return list(ESPEAK_VARIANTS) if engine == ESPEAK else list(SHIFT_VARIANTS)


def combos(engine: str) -> list[tuple[str, str]]:
    """All (voice, variant) pairs of ``engine``, in table order: the unit of held-out speakers."""
    return [(v, var) for v in voices(engine) for var in variants(engine)]


def shuffled_combos(engine: str, rng: random.Random) -> list[tuple[str, str]]:
    """:func:`combos` in random order, voices taking turns (voice order and each voice's
    variants shuffled), so the first few combos - the held-out ones - cover many voices."""
    names = list(voices(engine))
    rng.shuffle(names)
    per_voice = []
    for v in names:
        vs = variants(engine)
        rng.shuffle(vs)
        per_voice.append([(v, var) for var in vs])
    return [c for turn in zip(*per_voice, strict=True) for c in turn]


def sex(engine: str, voice: str, variant: str) -> str:
    """``M`` or ``F`` for SPEAKERS.TXT."""
    return ESPEAK_VARIANTS[variant] if engine == ESPEAK else voices(engine)[voice]


def base_pitch(engine: str, variant: str) -> int:
    """The pitch a speaker's own jitter is added to: 0 for espeak-ng (absolute ``-p``), the
    variant's shift in cents otherwise."""
    return 0 if engine == ESPEAK else SHIFT_VARIANTS[variant]


def check_tools(engines: tuple[str, ...] = (ESPEAK, FLITE, FESTIVAL)) -> dict[str, str]:
    """Paths of sox and of the programs of ``engines``, or a clear :class:`AsrqError` that
    names the Debian packages to install."""
    names = [e for e in (ESPEAK, FLITE, FESTIVAL) if e in engines]
    names.insert(1 if ESPEAK in names else 0, "sox")
    found = {name: shutil.which(name) for name in names}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise AsrqError(
            f"{' and '.join(missing)} not found on PATH: the synthetic corpus needs them "
            f"(Debian/Ubuntu: apt-get install {' '.join(PACKAGES[n] for n in missing)})"
        )
    return {n: str(p) for n, p in found.items()}


def wave_command(
    tools: dict[str, str], engine: str, voice: str, variant: str, pitch: int, speed: int, text: str
) -> list[str]:
    """The command that writes one utterance as a RIFF WAV to stdout (espeak-ng, flite).
    ``text`` in lower case (espeak-ng reads all-caps words as acronyms at times)."""
    if engine == ESPEAK:
        return [
            tools[ESPEAK],
            "-v",
            f"{voice}+{variant}",
            "-p",
            str(pitch),
            "-s",
            str(speed),
            "--stdout",
            text,
        ]
    if engine == FLITE:
        f0 = FLITE_F0[voice] * 2 ** (pitch / 1200)
        return [
            tools[FLITE],
            "-voice",
            voice,
            "--setf",
            f"duration_stretch={100 / speed:.4f}",
            "--setf",
            f"int_f0_target_mean={f0:.1f}",
            "-t",
            text,
            "-o",
            "/dev/stdout",
        ]
    raise AsrqError(f"{engine}: no one-utterance command (festival runs per speaker)")


def sox_effects(engine: str, pitch: int, speed: int) -> list[str]:
    """sox effects after the engine: none for espeak-ng and flite (they do pitch and speed
    themselves); tempo and pitch shift for festival."""
    if engine != FESTIVAL:
        return []
    effects = ["pitch", str(pitch)] if pitch else []
    if speed != 100:
        effects = ["tempo", "-s", f"{speed / 100:.4f}", *effects]
    return effects


def festival_script(voice: str, items: list[tuple[str, str]]) -> str:
    """A festival ``--batch`` Scheme script that says each ``(text, wav_path)`` with ``voice``
    (``text``: lower-case letters, apostrophes and spaces; nothing that needs escaping)."""
    lines = [f"(voice_{voice})"]
    for text, path in items:
        if '"' in text or "\\" in text or '"' in path:
            raise AsrqError(f"festival: cannot quote {text!r} -> {path!r}")
        lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{path}" \'riff)')
    return "\n".join(lines) + "\n"
