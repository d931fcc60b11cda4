"""``asrq data``: make the corpus, the manifests + features, and the tokenizer.

Thin: each command parses options and calls :mod:`asrq.data`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import click

from asrq.config import DataConfig, SynthConfig, load_config
from asrq.utils.io import AsrqError

_D = DataConfig()
_S = SynthConfig()


class _DataGroup(click.Group):
    """Turns :class:`AsrqError` into ``error: <msg>`` and exit code 2, as the root ``asrq``
    group does, so ``data`` also behaves when invoked on its own (tests, embedding)."""

    def invoke(self, ctx: click.Context):  # noqa: D102
        try:
            return super().invoke(ctx)
        except AsrqError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_DataGroup, context_settings={"help_option_names": ["-h", "--help"]})
def data() -> None:
    """Data: synthesize the mini corpus, prepare LibriSpeech-layout corpora, train the BPE model.

    \b
      asrq data synth --out data/mini
      asrq data prepare librispeech --corpus-dir data/mini/LibriSpeech
      asrq data bpe --manifest-dir data/mini/manifests --lang-dir data/mini/lang_bpe
    """


@data.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path(_D.corpus_dir).parent,
    show_default=True,
    help="Output folder; the corpus goes to OUT/LibriSpeech.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Experiment YAML whose data.synth section sets the defaults below.",
)
@click.option(
    "--train-speakers", type=int, help=f"Training speakers [default: {_S.train_speakers}]."
)
@click.option(
    "--train-utts-per-speaker",
    type=int,
    help=f"Utterances per training speaker [default: {_S.train_utts_per_speaker}].",
)
@click.option(
    "--dev-speakers",
    type=int,
    help=f"dev-clean speakers, unseen (voice, variant) pairs [default: {_S.dev_speakers}].",
)
@click.option(
    "--test-speakers",
    type=int,
    help=f"test-clean speakers, unseen (voice, variant) pairs [default: {_S.test_speakers}].",
)
@click.option(
    "--eval-utts-per-speaker",
    type=int,
    help=f"Utterances per dev/test speaker [default: {_S.eval_utts_per_speaker}].",
)
@click.option(
    "--seed", type=int, help=f"Random seed: same seed, same corpus bytes [default: {_S.seed}]."
)
@click.option(
    "--min-words", type=int, help=f"Shortest sentence in words [default: {_S.min_words}]."
)
@click.option("--max-words", type=int, help=f"Longest sentence in words [default: {_S.max_words}].")
@click.option(
    "--flite-share",
    type=float,
    help=f"Share of train/dev/test-clean speakers voiced by flite [default: {_S.flite_share}].",
)
@click.option(
    "--test-other-speakers",
    type=int,
    help=f"test-other speakers, all festival (0: none) [default: {_S.test_other_speakers}].",
)
@click.option(
    "--everyday-share",
    type=float,
    help="Share of sentences from everyday English (WordNet examples) "
    f"[default: {_S.everyday_share}].",
)
@click.option(
    "--num-jobs",
    type=int,
    default=2,
    show_default=True,
    help="Synthesizer/sox pipelines run at once.",
)
@click.option("--force", is_flag=True, help="Replace a corpus made with a different config.")
def synth(
    out_dir: Path, config_path: Path | None, num_jobs: int, force: bool, **fields: float | None
) -> None:
    """Synthesize read speech with espeak-ng, flite and festival into OUT/LibriSpeech
    (LibriSpeech layout).

    Splits train-clean-100, dev-clean, test-clean (espeak-ng and flite) and test-other (festival
    only, an engine never in train); a speaker is an engine voice + variant + pitch + speed.
    Dev/test sentences and (engine, voice, variant) triples are never in train. Sentences: King
    James Bible clauses and everyday English (WordNet examples). Needs espeak-ng, flite,
    festival (+ festvox voices) and sox. Re-running with the same settings skips finished work.
    """
    from asrq.data.synth import read_synth_info, synthesize_corpus

    overrides = [f"data.synth.{k}={v}" for k, v in fields.items() if v is not None]
    cfg = load_config(config_path, overrides).data.synth
    t0 = time.time()
    corpus = synthesize_corpus(out_dir, cfg, num_jobs=num_jobs, force=force)
    info = read_synth_info(corpus)
    click.echo(f"corpus: {corpus} (config {json.dumps(dataclasses.asdict(cfg))})")
    for split, s in info["summary"].items():
        click.echo(
            f"  {split:<16} {s['speakers']:4d} speakers {s['utterances']:6d} utts "
            f"{s['hours']:8.3f} h"
        )
    click.echo(
        f"  total {info['total_hours']:.3f} h; synthesis {info['synth_seconds']} s "
        f"(this call {time.time() - t0:.1f} s); details in {corpus / '.asrq_synth.json'}"
    )


@data.group()
def prepare() -> None:
    """Make Lhotse manifests, fbank features and CutSets for a corpus."""


@prepare.command("librispeech")
@click.option(
    "--corpus-dir",
    type=click.Path(path_type=Path),
    required=True,
    help="The LibriSpeech/ folder itself (holding train-clean-100/, dev-clean/, ...).",
)
@click.option(
    "--out",
    "--manifest-dir",
    "manifest_dir",
    type=click.Path(path_type=Path),
    default=Path(_D.manifest_dir),
    show_default=True,
    help="Folder for recordings/supervisions manifests.",
)
@click.option(
    "--fbank-dir",
    type=click.Path(path_type=Path),
    default=Path(_D.fbank_dir),
    show_default=True,
    help="Folder for features and librispeech_cuts_<split>.jsonl.gz.",
)
@click.option(
    "--speed-perturb/--no-speed-perturb",
    default=_D.speed_perturb,
    show_default=True,
    help="Add 0.9x and 1.1x speed copies of the train splits (3x the train cuts).",
)
@click.option(
    "--num-jobs",
    type=int,
    default=2,
    show_default=True,
    help="Parallel processes for feature extraction.",
)
def prepare_librispeech_cmd(
    corpus_dir: Path, manifest_dir: Path, fbank_dir: Path, speed_perturb: bool, num_jobs: int
) -> None:
    """Prepare every split found in CORPUS_DIR: manifests, 80-dim fbank, CutSets.

    Validates the whole corpus first (nothing is written if it is bad); splits already
    prepared with the same settings are skipped.
    """
    from asrq.data.prepare import prepare_librispeech, read_prepare_info

    t0 = time.time()
    out = prepare_librispeech(
        corpus_dir, manifest_dir, fbank_dir, speed_perturb=speed_perturb, num_jobs=num_jobs
    )
    for split, path in out.items():
        info = read_prepare_info(fbank_dir, split) or {}
        click.echo(
            f"  {split:<16} {info.get('cuts', '?'):>6} cuts {info.get('hours', 0):8.3f} h  -> "
            f"{path}"
        )
    click.echo(f"done in {time.time() - t0:.1f} s")


@data.command()
@click.option(
    "--manifest-dir",
    type=click.Path(path_type=Path),
    default=Path(_D.manifest_dir),
    show_default=True,
    help="Folder with librispeech_supervisions_<split>.jsonl.gz.",
)
@click.option(
    "--lang-dir",
    type=click.Path(path_type=Path),
    default=Path(_D.lang_dir),
    show_default=True,
    help="Output folder: bpe.model, tokens.txt, transcript_words.txt.",
)
@click.option(
    "--vocab-size",
    type=int,
    default=_D.vocab_size,
    show_default=True,
    help="Number of tokens, <blk>/<sos/eos>/<unk> included.",
)
@click.option(
    "--split",
    "splits",
    multiple=True,
    help="Training split(s) to read (repeatable) [default: every train-* split in MANIFEST_DIR].",
)
def bpe(manifest_dir: Path, lang_dir: Path, vocab_size: int, splits: tuple[str, ...]) -> None:
    """Train the SentencePiece unigram tokenizer on the training transcripts only.

    Ids 0 <blk>, 1 <sos/eos>, 2 <unk>; files bpe.model, tokens.txt (icefall format),
    transcript_words.txt. Skipped when LANG_DIR holds a model for the same text and size.
    """
    from asrq.data.bpe import Tokenizer, read_transcripts, train_bpe

    prefix = "librispeech_supervisions_"
    if splits:
        files = [manifest_dir / f"{prefix}{s}.jsonl.gz" for s in splits]
    else:
        files = sorted(manifest_dir.glob(f"{prefix}train-*.jsonl.gz"))
        if not files:
            raise AsrqError(
                f"{manifest_dir}: no {prefix}train-*.jsonl.gz; run `asrq data prepare librispeech` "
                "first"
            )
    texts = [t for f in files for t in read_transcripts(f)]
    model = train_bpe(texts, lang_dir, vocab_size)
    tok = Tokenizer(model)
    click.echo(
        f"{model}: vocab size {tok.vocab_size} from {len(texts)} transcripts "
        f"({', '.join(f.name for f in files)})"
    )
