"""Training and evaluation data loaders over the CutSets of :mod:`asrq.data.prepare`.

A batch is a dict::

    features      (N, T, 80) float32  log-mel fbank, padded with LOG_EPSILON (log 1e-10)
    feature_lens  (N,) int64          valid frames of each row
    texts         list[str]           LibriSpeech-style transcripts
    cut_ids       list[str]

rows sorted by length, longest first. Training batches come from lhotse's
``DynamicBucketingSampler`` (about ``max_duration`` seconds of audio per batch, shuffled, per
DDP rank) and get SpecAugment as in icefall: 2 frequency masks of up to 27 bins, up to 10 time
masks covering at most 15% of each utterance, and a small time warp. With ``data.augment``
enabled (:class:`asrq.config.AugmentConfig`), training utterances also get waveform
augmentation (speed, reverb, noise, telephone, gain; :mod:`asrq.data.augment`) before their
features are computed. Call :func:`set_epoch` before each epoch to reshuffle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from asrq.utils.io import AsrqError

NUM_FEATURES = 80
# icefall uses 80 for its (longer) LibriSpeech utterances; our synthetic ones are ~4 s.
TIME_WARP_FACTOR = 20


def load_cuts(path: str | Path, lazy: bool = False):
    """Read a CutSet manifest; a clear :class:`AsrqError` if it is missing or not cuts."""
    from lhotse import CutSet, load_manifest, load_manifest_lazy

    path = Path(path)
    if not path.is_file():
        raise AsrqError(
            f"{path}: cuts manifest not found; make it with "
            "`asrq data prepare librispeech --corpus-dir <.../LibriSpeech> --fbank-dir "
            f"{path.parent}`"
        )
    try:
        cuts = load_manifest_lazy(path) if lazy else load_manifest(path)
    except Exception as e:  # lhotse raises plain exceptions for unknown manifest content
        raise AsrqError(f"{path}: not a readable lhotse manifest ({e})") from e
    if not isinstance(cuts, CutSet):
        raise AsrqError(f"{path}: expected a CutSet manifest, got {type(cuts).__name__}")
    return cuts


def make_spec_augment(time_warp_factor: int = TIME_WARP_FACTOR):
    """lhotse's SpecAugment with icefall's LibriSpeech settings (smaller time warp)."""
    from lhotse.dataset import SpecAugment

    return SpecAugment(
        time_warp_factor=time_warp_factor,
        num_feature_masks=2,
        features_mask_size=27,
        num_frame_masks=10,
        frames_mask_size=100,
        max_frames_mask_fraction=0.15,
        p=0.9,
    )


class AsrDataset(Dataset):
    """Turns a mini-batch CutSet (what a lhotse sampler yields) into the batch dict.

    SpecAugment, when given, is applied to each utterance before padding, so the time masks
    scale with that utterance's own length and the mask value is its own mean.
    ``waveform_augment`` (:class:`asrq.data.augment.WaveformAugment`) makes the features of
    the utterances it augments from their audio; its draws use the epoch of ``sampler``.
    """

    def __init__(
        self,
        spec_augment: torch.nn.Module | None = None,
        waveform_augment: Any | None = None,
        sampler: Any | None = None,
    ) -> None:
        self.spec_augment = spec_augment
        self.waveform_augment = waveform_augment
        self.sampler = sampler

    def __getitem__(self, cuts: Any) -> dict[str, Any]:
        from lhotse.utils import LOG_EPSILON

        cuts = sorted(cuts, key=lambda c: c.num_frames, reverse=True)
        if self.waveform_augment is not None:
            epoch = int(getattr(self.sampler, "epoch", 0))
            feats = self.waveform_augment.features(cuts, epoch)
            order = sorted(range(len(cuts)), key=lambda i: feats[i].shape[0], reverse=True)
            cuts, feats = [cuts[i] for i in order], [feats[i] for i in order]
        else:
            feats = [torch.from_numpy(c.load_features()).float() for c in cuts]
        if self.spec_augment is not None:
            feats = [self.spec_augment(f.unsqueeze(0))[0] for f in feats]
        lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
        features = torch.full(
            (len(feats), int(lens.max()), feats[0].shape[1]), LOG_EPSILON, dtype=torch.float32
        )
        for i, f in enumerate(feats):
            features[i, : f.shape[0]] = f
        return {
            "features": features,
            "feature_lens": lens,
            "texts": [" ".join(s.text for s in c.supervisions) for c in cuts],
            "cut_ids": [c.id for c in cuts],
        }


def make_train_loader(
    cuts_paths: list[str | Path] | str | Path,
    max_duration: float,
    num_buckets: int,
    seed: int,
    world_size: int = 1,
    rank: int = 0,
    num_workers: int = 1,
    spec_augment: bool = True,
    time_warp_factor: int = TIME_WARP_FACTOR,
    augment: Any | None = None,
) -> DataLoader:
    """Shuffled, length-bucketed training batches of about ``max_duration`` seconds.

    Several manifests (e.g. train-clean-100 + train-clean-360) are read lazily in a random
    file order per epoch. ``world_size`` / ``rank`` give each DDP rank its own batches; the
    last incomplete batch is dropped. ``loader.sampler`` is the lhotse sampler: call
    :func:`set_epoch` (or ``loader.sampler.set_epoch``) each epoch. ``augment``: a
    :class:`asrq.config.AugmentConfig` (``data.augment``); waveform augmentation when enabled.
    """
    from lhotse import CutSet
    from lhotse.dataset import DynamicBucketingSampler

    paths = [cuts_paths] if isinstance(cuts_paths, str | Path) else list(cuts_paths)
    if not paths:
        raise AsrqError("no training cuts manifests given")
    sets = [load_cuts(p, lazy=True) for p in paths]  # also checks every file exists
    cuts = sets[0] if len(sets) == 1 else CutSet.from_files([Path(p) for p in paths], seed=seed)
    sampler = DynamicBucketingSampler(
        cuts,
        max_duration=max_duration,
        num_buckets=num_buckets,
        shuffle=True,
        drop_last=True,
        seed=seed,
        world_size=world_size,
        rank=rank,
    )
    wave_aug = None
    if augment is not None and augment.enabled:
        from asrq.data.augment import WaveformAugment

        wave_aug = WaveformAugment(augment)
    dataset = AsrDataset(
        make_spec_augment(time_warp_factor) if spec_augment else None, wave_aug, sampler
    )
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
    )


def make_eval_loader(
    cuts_path: str | Path, max_duration: float, num_workers: int = 0
) -> DataLoader:
    """All cuts of ``cuts_path`` in file order, about ``max_duration`` seconds per batch, no
    augmentation (a cut longer than ``max_duration`` gets a batch of its own)."""
    from lhotse.dataset import SimpleCutSampler

    cuts = load_cuts(cuts_path)
    sampler = SimpleCutSampler(
        cuts, max_duration=max_duration, shuffle=False, drop_last=False, world_size=1, rank=0
    )
    return DataLoader(AsrDataset(None), sampler=sampler, batch_size=None, num_workers=num_workers)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a training loader for ``epoch`` (same order on every rank for a given epoch)."""
    loader.sampler.set_epoch(epoch)
