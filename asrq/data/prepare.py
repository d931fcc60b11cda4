"""The LibriSpeech recipe's data stage: Lhotse manifests and 80-dim fbank features.

Works on the real corpus and on the synthetic one (same layout). File names follow icefall::

    <manifest_dir>/librispeech_recordings_<split>.jsonl.gz
    <manifest_dir>/librispeech_supervisions_<split>.jsonl.gz
    <fbank_dir>/librispeech_feats_<split>/feats*.lca     (LilcomChunkyWriter stores)
    <fbank_dir>/librispeech_cuts_<split>.jsonl.gz         (CutSet with features attached)

Safe to re-run: the whole corpus is validated before anything is written (a bad corpus
leaves the output folders untouched); a split is skipped when its cuts file exists and its
marker ``<fbank_dir>/.librispeech_<split>.done.json`` matches the corpus folder, a fingerprint
of the split's files (names, sizes, mtimes) and the settings; every file is written under a
temp name and renamed. Paths inside the manifests are absolute, so training and decoding
work from any working directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import soundfile as sf
from tqdm.auto import tqdm

from asrq.utils.io import AsrqError, atomic_path, atomic_write_json

log = logging.getLogger(__name__)

# Official split names (and Mini LibriSpeech's), as lhotse.recipes.librispeech knows them.
# fmt: skip below: a table, related names share a line
LIBRISPEECH_SPLITS = (
    "dev-clean", "dev-other", "test-clean", "test-other",
    "train-clean-100", "train-clean-360", "train-other-500",
    "dev-clean-2", "train-clean-5",
)  # fmt: skip
NUM_MEL_BINS = 80
SPEEDS = (0.9, 1.1)
PREPARE_VERSION = 1
MIN_CUTS_PER_JOB = 100  # fewer cuts per job than this: not worth starting a process


def cuts_path(fbank_dir: str | Path, split: str) -> Path:
    """Where :func:`prepare_librispeech` writes the CutSet of ``split`` (icefall's name)."""
    return Path(fbank_dir) / f"librispeech_cuts_{split}.jsonl.gz"


def find_splits(corpus_dir: str | Path) -> list[str]:
    """The LibriSpeech split folders present in ``corpus_dir``, or a one-line
    :class:`AsrqError` saying what is wrong with the folder."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.exists():
        raise AsrqError(f"{corpus_dir}: corpus folder does not exist")
    if not corpus_dir.is_dir():
        raise AsrqError(
            f"{corpus_dir}: not a folder; expected the LibriSpeech/ folder of the corpus"
        )
    splits = sorted(
        p.name for p in corpus_dir.iterdir() if p.is_dir() and p.name in LIBRISPEECH_SPLITS
    )
    if splits:
        return splits
    if (corpus_dir / "LibriSpeech").is_dir():
        raise AsrqError(
            f"{corpus_dir}: no LibriSpeech split folders here; did you mean "
            f"{corpus_dir / 'LibriSpeech'}?"
        )
    if corpus_dir.name in LIBRISPEECH_SPLITS:
        raise AsrqError(f"{corpus_dir}: this is a split folder; did you mean {corpus_dir.parent}?")
    raise AsrqError(
        f"{corpus_dir}: no LibriSpeech split folders found (expected some of "
        f"{', '.join(LIBRISPEECH_SPLITS)})"
    )


def validate_split(split_dir: Path) -> int:
    """Check every transcript line of a split has a readable, non-empty audio file at the
    path lhotse will look for. Returns the number of utterances; raises :class:`AsrqError`
    naming the first bad file."""
    transcripts = sorted(split_dir.rglob("*.trans.txt"))
    if not transcripts:
        raise AsrqError(f"{split_dir}: no *.trans.txt transcript files in this split")
    n = 0
    for trans in transcripts:
        try:
            lines = trans.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise AsrqError(f"{trans}: unreadable transcript ({e})") from e
        for lineno, line in enumerate(lines, 1):
            parts = line.strip().split(maxsplit=1)  # lhotse's parser: blank lines crash it
            if len(parts) != 2:
                raise AsrqError(
                    f"{trans}:{lineno}: expected '<utterance-id> <TEXT>', got {line.strip()!r}"
                )
            utt_id = parts[0]
            # lhotse's rule: <split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac
            audio = split_dir / Path(utt_id.replace("-", "/")).parent / f"{utt_id}.flac"
            check_audio(audio, f"{trans}:{lineno}: utterance {utt_id}")
            n += 1
    if n == 0:
        raise AsrqError(f"{split_dir}: the transcripts list no utterances")
    return n


def check_audio(audio: Path, where: str = "") -> None:
    """Raise :class:`AsrqError` if ``audio`` is missing, 0 bytes, unreadable or has no samples."""
    prefix = f"{where}: " if where else ""
    if not audio.is_file():
        raise AsrqError(f"{prefix}audio file {audio} does not exist")
    if audio.stat().st_size == 0:
        raise AsrqError(f"{audio}: empty audio file (0 bytes)")
    try:
        info = sf.info(str(audio))
    except Exception as e:  # soundfile raises several types for bad files
        raise AsrqError(f"{audio}: unreadable audio file ({str(e).strip().splitlines()[0]})") from e
    frames = info.frames
    if frames <= 0 or frames >= 2**62:  # FLAC headers may leave the length unknown: read some
        try:
            with sf.SoundFile(str(audio)) as f:
                frames = len(f.read(16, dtype="int16"))
        except Exception as e:
            msg = str(e).strip().splitlines()[0]
            raise AsrqError(f"{audio}: audio file has no readable samples ({msg})") from e
    if frames == 0:
        raise AsrqError(f"{audio}: audio file has no samples")


def split_fingerprint(split_dir: Path) -> str:
    """Hash of the names, sizes and mtimes of all files of a split (stat only, no reads)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(split_dir):
        dirs.sort()
        for f in sorted(files):
            st = os.stat(os.path.join(root, f))
            rel = os.path.relpath(os.path.join(root, f), split_dir)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def prepare_librispeech(
    corpus_dir: str | Path,
    manifest_dir: str | Path,
    fbank_dir: str | Path,
    speed_perturb: bool = False,
    num_jobs: int = 2,
    progress: bool = True,
) -> dict[str, Path]:
    """Make manifests, fbank features and CutSets for every split found in ``corpus_dir``.

    Args:
        corpus_dir: the ``LibriSpeech/`` folder itself (holding e.g. ``train-clean-100/``).
        manifest_dir: where recordings / supervisions manifests go.
        fbank_dir: where feature stores and ``librispeech_cuts_<split>.jsonl.gz`` go.
        speed_perturb: train splits also get 0.9x and 1.1x speed copies (ids ``..._sp0.9``).
        num_jobs: parallel processes for feature extraction (threads for manifest parsing).

    Returns:
        ``{split: path of the CutSet}``; each cut has ``(T, 80)`` log-mel fbank features
        (10 ms hop) and one supervision with the upper-case transcript.
    """
    corpus_dir = Path(corpus_dir).absolute()
    manifest_dir, fbank_dir = Path(manifest_dir).absolute(), Path(fbank_dir).absolute()
    splits = find_splits(corpus_dir)

    todo: dict[str, dict[str, Any]] = {}
    for split in splits:
        params = {
            "corpus_dir": str(corpus_dir),
            "fingerprint": split_fingerprint(corpus_dir / split),
            "speed_perturb": bool(speed_perturb and split.startswith("train")),
            "num_mel_bins": NUM_MEL_BINS,
            "manifest_dir": str(manifest_dir),
            "version": PREPARE_VERSION,
        }
        if _is_done(fbank_dir, split, params):
            log.info("%s: already prepared in %s, skipping", split, fbank_dir)
        else:
            todo[split] = params
    # Validate everything first: a bad corpus must leave the outputs untouched.
    for split in todo:
        todo[split]["utterances"] = validate_split(corpus_dir / split)

    for split, params in todo.items():
        _prepare_split(corpus_dir, split, manifest_dir, fbank_dir, params, num_jobs, progress)
    return {split: cuts_path(fbank_dir, split) for split in splits}


def read_prepare_info(fbank_dir: str | Path, split: str) -> dict[str, Any] | None:
    """The marker of a prepared split (settings, number of cuts, hours, seconds taken)."""
    try:
        return json.loads(_marker(Path(fbank_dir), split).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _marker(fbank_dir: Path, split: str) -> Path:
    return fbank_dir / f".librispeech_{split}.done.json"


def _is_done(fbank_dir: Path, split: str, params: dict[str, Any]) -> bool:
    info = read_prepare_info(fbank_dir, split)
    if info is None or not cuts_path(fbank_dir, split).is_file():
        return False
    return all(info.get(k) == v for k, v in params.items())


def compute_fbank(
    cuts: Any, storage_dir: Path, num_jobs: int = 2, progress: bool = True, desc: str = ""
) -> Any:
    """Compute 80-dim fbank for ``cuts`` into LilcomChunkyWriter files under ``storage_dir``
    and return the cuts with features attached.

    With ``num_jobs > 1`` the cuts are cut into ``8 * num_jobs`` chunks run by ``num_jobs``
    spawned processes; small sets run in-process, as starting a worker (importing torch)
    costs seconds. Extraction always runs with one torch thread per process, as icefall's
    scripts do: per-utterance ops are small, and two threads on a busy 2-core machine ran
    8x slower here.
    """
    from lhotse import CutSet

    jobs = max(1, min(num_jobs, len(cuts) // MIN_CUTS_PER_JOB))
    if jobs == 1:
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _fbank_chunk(cuts, storage_dir / "feats", progress)
        finally:
            torch.set_num_threads(old)
    chunks = cuts.split(num_splits=min(len(cuts), 8 * jobs))
    ctx = multiprocessing.get_context("spawn")
    done: list[Any] = [None] * len(chunks)
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_one_thread) as ex:
        futures = {
            ex.submit(_fbank_chunk, c, storage_dir / f"feats-{i}", False): i
            for i, c in enumerate(chunks)
        }
        with tqdm(
            total=len(cuts), desc=f"fbank {desc}".strip(), unit="cut", disable=not progress
        ) as bar:
            for fut in as_completed(futures):
                done[futures[fut]] = fut.result()
                bar.update(len(done[futures[fut]]))
    return CutSet([c for chunk in done for c in chunk])


def _fbank_chunk(cuts: Any, storage_path: Path, progress: bool) -> Any:
    from lhotse import Fbank, FbankConfig, LilcomChunkyWriter

    return cuts.compute_and_store_features(
        extractor=Fbank(FbankConfig(num_mel_bins=NUM_MEL_BINS)),
        storage_path=storage_path,
        num_jobs=1,
        storage_type=LilcomChunkyWriter,
        progress_bar=progress,
    )


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _prepare_split(
    corpus_dir: Path,
    split: str,
    manifest_dir: Path,
    fbank_dir: Path,
    params: dict[str, Any],
    num_jobs: int,
    progress: bool,
) -> None:
    from lhotse import CutSet
    from lhotse.recipes import librispeech as ls_recipe
    from lhotse.utils import fastcopy

    t0 = time.time()
    # output_dir=None: lhotse returns the manifests and we write them atomically ourselves.
    manifests = ls_recipe.prepare_librispeech(
        corpus_dir, dataset_parts=[split], output_dir=None, num_jobs=num_jobs
    )
    recordings, supervisions = manifests[split]["recordings"], manifests[split]["supervisions"]
    for kind, manifest in (("recordings", recordings), ("supervisions", supervisions)):
        with atomic_path(manifest_dir / f"librispeech_{kind}_{split}.jsonl.gz") as tmp:
            manifest.to_file(tmp)

    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    if params["speed_perturb"]:
        cuts = cuts + cuts.perturb_speed(SPEEDS[0]) + cuts.perturb_speed(SPEEDS[1])

    fbank_dir.mkdir(parents=True, exist_ok=True)
    for stale in fbank_dir.glob(f".librispeech_feats_{split}.tmp*"):  # from a killed run
        shutil.rmtree(stale, ignore_errors=True)
    final_store = fbank_dir / f"librispeech_feats_{split}"
    tmp_store = Path(tempfile.mkdtemp(dir=fbank_dir, prefix=f".librispeech_feats_{split}.tmp"))
    try:
        cuts = compute_fbank(cuts, tmp_store, num_jobs=num_jobs, progress=progress, desc=split)
        if len(cuts) != len(recordings) * (3 if params["speed_perturb"] else 1):
            raise RuntimeError(
                f"{split}: feature extraction dropped cuts ({len(cuts)} left); see the log"
            )
        tmp_store.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700
        # the old cuts file points into the old store: retire it before replacing the store
        _marker(fbank_dir, split).unlink(missing_ok=True)
        cuts_path(fbank_dir, split).unlink(missing_ok=True)
        if final_store.exists():
            shutil.rmtree(final_store)
        os.replace(tmp_store, final_store)
    except BaseException:
        shutil.rmtree(tmp_store, ignore_errors=True)
        raise

    def relocate(cut: Any) -> Any:
        rel = Path(cut.features.storage_path).relative_to(tmp_store)
        return fastcopy(cut, features=fastcopy(cut.features, storage_path=str(final_store / rel)))

    cuts = cuts.map(relocate).to_eager().sort_by_recording_id()
    out = cuts_path(fbank_dir, split)
    with atomic_path(out) as tmp:
        cuts.to_file(tmp)
    hours = sum(c.duration for c in cuts) / 3600
    atomic_write_json(
        _marker(fbank_dir, split),
        {
            **params,
            "cuts": len(cuts),
            "hours": round(hours, 4),
            "seconds": round(time.time() - t0, 1),
        },
    )
    log.info("%s: %d cuts, %.2f h, %.1f s -> %s", split, len(cuts), hours, time.time() - t0, out)
