"""Data configs: the corpus synthesizer, waveform augmentation, manifests and features."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from asrq.config.checks import _check


@dataclass
class SynthConfig:
    """The synthetic corpus in LibriSpeech layout (see asrq.data.synth).

    Speakers of train, dev-clean and test-clean come from espeak-ng and flite (``flite_share``
    of each split's speakers are flite voices); ``test_other_speakers`` festival speakers form
    test-other (0: no test-other). ``everyday_share`` of the sentences are everyday English
    (WordNet examples), the rest King James Bible clauses.
    """

    train_speakers: int = 48
    train_utts_per_speaker: int = 60
    dev_speakers: int = 4
    test_speakers: int = 6
    eval_utts_per_speaker: int = 20
    seed: int = 0
    min_words: int = 4
    max_words: int = 22
    flite_share: float = 0.3
    test_other_speakers: int = 6
    everyday_share: float = 0.5

    def __post_init__(self) -> None:
        for name in ("train_speakers", "dev_speakers", "test_speakers"):
            _check(getattr(self, name) >= 1, f"data.synth.{name} must be >= 1")
        _check(self.test_other_speakers >= 0, "data.synth.test_other_speakers must be >= 0")
        for name in ("flite_share", "everyday_share"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"data.synth.{name} must be in [0, 1]")


@dataclass
class AugmentConfig:
    """Waveform augmentation of training utterances (asrq.data.augment), each applied to an
    utterance with its probability, in this order: speed, reverb, noise, telephone, gain.
    All probabilities 0 (the default): no augmentation, stored features are used as they are.
    ``snr_range``/``gain_db_range`` in dB; ``babble_share``: share of noise draws that are
    babble (other utterances of the batch) rather than coloured noise."""

    speed_prob: float = 0.0
    speed_factors: list[float] = field(default_factory=lambda: [0.9, 1.1])
    reverb_prob: float = 0.0
    noise_prob: float = 0.0
    snr_range: list[float] = field(default_factory=lambda: [5.0, 25.0])
    babble_share: float = 0.3
    telephone_prob: float = 0.0
    gain_prob: float = 0.0
    gain_db_range: list[float] = field(default_factory=lambda: [-12.0, 6.0])
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "speed_prob",
            "reverb_prob",
            "noise_prob",
            "babble_share",
            "telephone_prob",
            "gain_prob",
        ):
            _check(0.0 <= getattr(self, name) <= 1.0, f"data.augment.{name} must be in [0, 1]")
        for name in ("snr_range", "gain_db_range"):
            r = getattr(self, name)
            _check(len(r) == 2 and r[0] <= r[1], f"data.augment.{name} must be [low, high]")
        _check(
            len(self.speed_factors) > 0 and all(f > 0 for f in self.speed_factors),
            "data.augment.speed_factors must be positive numbers",
        )

    @property
    def enabled(self) -> bool:
        return any(
            p > 0
            for p in (
                self.speed_prob,
                self.reverb_prob,
                self.noise_prob,
                self.telephone_prob,
                self.gain_prob,
            )
        )


@dataclass
class DataConfig:
    corpus_dir: str = "data/mini/LibriSpeech"
    manifest_dir: str = "data/mini/manifests"
    fbank_dir: str = "data/mini/fbank"
    lang_dir: str = "data/mini/lang_bpe"
    vocab_size: int = 256
    train_splits: list[str] = field(default_factory=lambda: ["train-clean-100"])
    dev_split: str = "dev-clean"
    test_split: str = "test-clean"
    #: a second test split the recipes also score (the mini corpus: festival voices, an engine
    #: never heard in training); "" or a split without cuts: skipped
    test_other_split: str = "test-other"
    speed_perturb: bool = False
    max_duration: float = 60.0  # seconds of audio per batch
    num_buckets: int = 8
    num_workers: int = 1
    spec_augment: bool = True
    synth: SynthConfig = field(default_factory=SynthConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _check(self.vocab_size >= 2, "data.vocab_size must be >= 2")
        _check(self.max_duration > 0, "data.max_duration must be > 0")

    @property
    def bpe_model(self) -> Path:
        return Path(self.lang_dir) / "bpe.model"
