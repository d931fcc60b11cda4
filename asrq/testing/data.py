"""A tiny synthetic corpus with manifests, fbank features and a BPE model, made once per test
session (``tests/conftest.py`` fixture ``tiny_data``) for every test that needs real data.

15 utterances (3 train speakers x 3, 1 dev x 2, 1 test-clean x 2, 1 test-other x 2), about
45 s of audio; making it takes a few seconds on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asrq.config import ExperimentConfig, SynthConfig

TINY_SYNTH = SynthConfig(
    train_speakers=3,
    train_utts_per_speaker=3,
    dev_speakers=1,
    test_speakers=1,
    eval_utts_per_speaker=2,
    seed=0,
    test_other_speakers=1,
)
TINY_VOCAB = 64  # what 9 sentences can support; the model may end up slightly smaller


@dataclass(frozen=True)
class TinyData:
    corpus_dir: Path  # .../LibriSpeech
    manifest_dir: Path
    fbank_dir: Path
    lang_dir: Path

    def cuts(self, split: str) -> Path:
        return self.fbank_dir / f"librispeech_cuts_{split}.jsonl.gz"

    @property
    def train_cuts(self) -> Path:
        return self.cuts("train-clean-100")

    @property
    def dev_cuts(self) -> Path:
        return self.cuts("dev-clean")

    @property
    def test_cuts(self) -> Path:
        return self.cuts("test-clean")

    @property
    def bpe_model(self) -> Path:
        return self.lang_dir / "bpe.model"


def make_tiny_corpus(
    tmp_dir: str | Path, cfg: SynthConfig = TINY_SYNTH, vocab_size: int = TINY_VOCAB
) -> TinyData:
    """Synthesize, prepare and tokenize a tiny corpus under ``tmp_dir`` (re-runs skip)."""
    from asrq.data.bpe import read_transcripts, train_bpe
    from asrq.data.prepare import prepare_librispeech
    from asrq.data.synth import synthesize_corpus

    root = Path(tmp_dir)
    corpus = synthesize_corpus(root, cfg, num_jobs=2, progress=False)
    data = TinyData(corpus, root / "manifests", root / "fbank", root / "lang_bpe")
    prepare_librispeech(corpus, data.manifest_dir, data.fbank_dir, num_jobs=1, progress=False)
    texts = read_transcripts(
        data.manifest_dir / "librispeech_supervisions_train-clean-100.jsonl.gz"
    )
    train_bpe(texts, data.lang_dir, vocab_size)
    return data


def tiny_train_config(
    cfg: ExperimentConfig, data: TinyData, exp_dir: str | Path, **train: Any
) -> ExperimentConfig:
    """``cfg`` (e.g. :func:`asrq.testing.models.tiny_config` with ``vocab_size=0``) set up to
    train on the tiny corpus ``data`` into ``exp_dir``: small batches, no loader workers, a log
    line every step, no periodic checkpoints, 5 warm-up steps; ``train``: further
    ``cfg.train`` fields (``max_steps=20``). Changes and returns ``cfg``."""
    cfg.data.fbank_dir = str(data.fbank_dir)
    cfg.data.lang_dir = str(data.lang_dir)
    cfg.data.max_duration = 12.0
    cfg.data.num_buckets = 2
    cfg.data.num_workers = 0
    cfg.train.exp_dir = str(exp_dir)
    cfg.train.log_every = 1
    cfg.train.save_every = 0
    cfg.train.optim.warmup_batches = 5
    cfg.train.loss.warm_steps = 5
    for k, v in train.items():
        if not hasattr(cfg.train, k):
            raise AttributeError(f"train has no field {k!r}")
        setattr(cfg.train, k, v)
    return cfg
