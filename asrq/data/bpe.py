"""SentencePiece tokenizer for the RNN-T output vocabulary (icefall's ``lang_bpe_<N>``).

We train a **unigram** model, as icefall does for its LibriSpeech BPE vocabularies: the
token tables then line up with icefall's recipes, and the unigram LM (Kudo 2018) picks the
most probable segmentation of each word instead of BPE's greedy merges, which was reported
to match or beat BPE at the same size and allows subword sampling later. Special ids::

    0 <blk>       RNN-T / CTC blank (user_defined_symbols[0])
    1 <sos/eos>   start / end of sentence for attention decoders (user_defined_symbols[1])
    2 <unk>       unknown (unk_id)

byte_fallback is off and character_coverage 1.0 (the alphabet is 26 letters + apostrophe).
Files written in ``lang_dir``: ``bpe.model``, ``tokens.txt`` (``<token> <id>`` per line, as
icefall's ``tokens.txt``), ``transcript_words.txt`` (the training text) and ``bpe.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

from asrq.utils.io import AsrqError, atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

BLANK, SOS_EOS, UNK = "<blk>", "<sos/eos>", "<unk>"
MODEL_TYPE = "unigram"


def read_transcripts(manifest: str | Path) -> list[str]:
    """Texts of a supervisions manifest or a CutSet manifest. Speed-perturbed copies
    (cut ids ending in ``_sp<factor>``) are skipped: they repeat the same text."""
    from lhotse import CutSet, SupervisionSet, load_manifest_lazy

    path = Path(manifest)
    if not path.is_file():
        raise AsrqError(f"{path}: manifest not found; make it with `asrq data prepare librispeech`")
    m = load_manifest_lazy(path)
    if isinstance(m, SupervisionSet):
        return [s.text for s in m if s.text]
    if isinstance(m, CutSet):
        return [s.text for c in m if "_sp" not in c.id for s in c.supervisions if s.text]
    raise AsrqError(f"{path}: expected a supervisions or cuts manifest, got {type(m).__name__}")


def train_bpe(transcripts: list[str] | str | Path, lang_dir: str | Path, vocab_size: int) -> Path:
    """Train the tokenizer on the training transcripts and return ``<lang_dir>/bpe.model``.

    ``transcripts`` is a list of texts or the path of a supervisions / cuts manifest of the
    training split. Skipped when ``lang_dir`` already holds a model trained with the same
    ``vocab_size`` on the same text. On a small corpus SentencePiece may not find
    ``vocab_size`` pieces; the model then has fewer (see :attr:`Tokenizer.vocab_size`).
    """
    import sentencepiece as spm

    texts = (
        read_transcripts(transcripts) if isinstance(transcripts, str | Path) else list(transcripts)
    )
    texts = [" ".join(t.split()) for t in texts if t and t.strip()]
    if not texts:
        raise AsrqError("no training transcripts to train the BPE model on")
    if vocab_size < 4:
        raise AsrqError(
            f"vocab size {vocab_size} is too small: 3 ids are taken by {BLANK}, {SOS_EOS}, {UNK}"
        )
    lang_dir = Path(lang_dir)
    model_path = lang_dir / "bpe.model"
    text_hash = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    old = read_bpe_info(lang_dir)
    if (
        model_path.is_file()
        and old
        and old.get("requested_vocab_size") == vocab_size
        and old.get("text_hash") == text_hash
    ):
        log.info("%s: already trained with vocab size %d, skipping", model_path, vocab_size)
        return model_path

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            model_type=MODEL_TYPE,
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # tiny corpora cannot fill large vocabularies
            character_coverage=1.0,
            byte_fallback=False,
            user_defined_symbols=[BLANK, SOS_EOS],
            unk_id=2,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            input_sentence_size=100_000_000,
            shuffle_input_sentence=True,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise AsrqError(f"SentencePiece training failed: {e}") from e
    atomic_write_bytes(model_path, model.getvalue())
    tok = Tokenizer(model_path)
    atomic_write_text(
        lang_dir / "tokens.txt",
        "".join(f"{tok.id_to_piece(i)} {i}\n" for i in range(tok.vocab_size)),
    )
    atomic_write_text(lang_dir / "transcript_words.txt", "".join(t + "\n" for t in texts))
    atomic_write_json(
        lang_dir / "bpe.json",
        {
            "model_type": MODEL_TYPE,
            "requested_vocab_size": vocab_size,
            "vocab_size": tok.vocab_size,
            "num_sentences": len(texts),
            "text_hash": text_hash,
        },
    )
    if tok.vocab_size < vocab_size:
        log.warning(
            "%s: only %d pieces (asked %d): the training text is small",
            model_path,
            tok.vocab_size,
            vocab_size,
        )
    return model_path


def read_bpe_info(lang_dir: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(lang_dir) / "bpe.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class Tokenizer:
    """Text <-> token ids with a model made by :func:`train_bpe`.

    ``blank_id == 0``, ``sos_eos_id == 1``, ``unk_id == 2``; texts are LibriSpeech style
    (upper case); decoding drops the special tokens.
    """

    blank_id = 0
    sos_eos_id = 1
    unk_id = 2

    def __init__(self, model_path: str | Path) -> None:
        import sentencepiece as spm

        path = Path(model_path)
        if path.is_dir():
            path = path / "bpe.model"
        if not path.is_file():
            raise AsrqError(f"{path}: BPE model not found; make it with `asrq data bpe`")
        self.path = path
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.load(str(path))
        except (OSError, RuntimeError) as e:
            raise AsrqError(f"{path}: not a SentencePiece model ({e})") from e
        got = [self.sp.id_to_piece(i) for i in range(3)]
        if got != [BLANK, SOS_EOS, UNK]:
            raise AsrqError(
                f"{path}: ids 0..2 are {got}, expected {[BLANK, SOS_EOS, UNK]} (train it with "
                "`asrq data bpe`)"
            )

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, e.g. ``[[25, 7, 113], ...]`` (no blank / sos / eos)."""
        return self.sp.encode(list(texts), out_type=int)

    def decode(self, ids: list[int]) -> str:
        """Text of one token sequence; blank and ``<sos/eos>`` ids are dropped."""
        return self.sp.decode(
            [int(i) for i in ids if int(i) not in (self.blank_id, self.sos_eos_id)]
        )

    def decode_batch(self, batch: list[list[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(i)

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"
