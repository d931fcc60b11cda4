"""The SentencePiece tokenizer and the data loaders, on the tiny corpus."""

from __future__ import annotations

import random
import re

import pytest
import torch
from click.testing import CliRunner
from lhotse import load_manifest
from lhotse.utils import LOG_EPSILON

from asrq.cli.data import data
from asrq.data.bpe import Tokenizer, read_transcripts, train_bpe
from asrq.data.loader import load_cuts, make_eval_loader, make_train_loader, set_epoch
from asrq.utils.io import AsrqError


def _train_texts(tiny_data) -> list[str]:
    return read_transcripts(
        tiny_data.manifest_dir / "librispeech_supervisions_train-clean-100.jsonl.gz"
    )


def test_special_ids_and_round_trip(tiny_data):
    tok = Tokenizer(tiny_data.bpe_model)
    assert (tok.blank_id, tok.sos_eos_id, tok.unk_id) == (0, 1, 2)
    assert [tok.id_to_piece(i) for i in range(3)] == ["<blk>", "<sos/eos>", "<unk>"]
    assert 20 < tok.vocab_size <= 64
    texts = _train_texts(tiny_data)
    ids = tok.encode(texts)
    assert all(all(3 <= i < tok.vocab_size for i in seq) for seq in ids)
    assert [tok.decode(seq) for seq in ids] == texts
    # text never seen in training still round-trips (character coverage 1.0, all letters seen)
    assert tok.decode(tok.encode(["THE SEA"])[0]) == "THE SEA"
    assert tok.decode([0, *tok.encode(["THE"])[0], 1]) == "THE"  # blank and sos/eos dropped


def test_lang_dir_files(tiny_data):
    tok = Tokenizer(tiny_data.lang_dir)
    lines = (tiny_data.lang_dir / "tokens.txt").read_text().splitlines()
    assert len(lines) == tok.vocab_size
    assert lines[:3] == ["<blk> 0", "<sos/eos> 1", "<unk> 2"]
    assert all(re.fullmatch(r"\S+ \d+", ln) for ln in lines)
    # trained on train transcripts only
    words = (tiny_data.lang_dir / "transcript_words.txt").read_text().splitlines()
    assert sorted(words) == sorted(_train_texts(tiny_data))
    eval_texts = [c.supervisions[0].text for c in load_manifest(tiny_data.test_cuts)]
    assert not set(eval_texts) & set(words)


def test_bpe_rerun_skips_and_vocab_change_retrains(tiny_data, tmp_path):
    texts = _train_texts(tiny_data)
    model = train_bpe(texts, tmp_path, 40)
    mtime = model.stat().st_mtime_ns
    assert train_bpe(texts, tmp_path, 40).stat().st_mtime_ns == mtime
    train_bpe(texts, tmp_path, 30)
    assert Tokenizer(model).vocab_size == 30


def test_bpe_cli(tiny_data, tmp_path):
    res = CliRunner().invoke(
        data,
        [
            "bpe",
            "--manifest-dir",
            str(tiny_data.manifest_dir),
            "--lang-dir",
            str(tmp_path),
            "--vocab-size",
            "32",
        ],
    )
    assert res.exit_code == 0, res.output
    assert Tokenizer(tmp_path / "bpe.model").vocab_size == 32
    res = CliRunner().invoke(
        data, ["bpe", "--manifest-dir", str(tmp_path / "none"), "--lang-dir", str(tmp_path)]
    )
    assert res.exit_code == 2 and "asrq data prepare librispeech" in res.output


def test_bad_model_path(tmp_path):
    with pytest.raises(AsrqError, match="asrq data bpe"):
        Tokenizer(tmp_path / "bpe.model")


def _check_batch(batch) -> None:
    assert set(batch) == {"features", "feature_lens", "texts", "cut_ids"}
    x, lens = batch["features"], batch["feature_lens"]
    n = len(batch["cut_ids"])
    assert x.dtype == torch.float32 and x.ndim == 3 and x.shape[0] == n and x.shape[2] == 80
    assert lens.dtype == torch.int64 and lens.shape == (n,)
    assert int(lens.max()) == x.shape[1] and lens.tolist() == sorted(lens.tolist(), reverse=True)
    for i, t in enumerate(lens.tolist()):
        assert torch.all(x[i, t:] == LOG_EPSILON)
    assert len(batch["texts"]) == n and all(isinstance(t, str) and t for t in batch["texts"])


def test_train_loader(tiny_data):
    torch.manual_seed(0)
    random.seed(0)
    cuts = {c.id: c for c in load_manifest(tiny_data.train_cuts)}
    loader = make_train_loader(
        [tiny_data.train_cuts], max_duration=12.0, num_buckets=2, seed=0, num_workers=0
    )
    set_epoch(loader, 0)
    batches = list(loader)
    assert batches
    augmented = False
    for b in batches:
        _check_batch(b)
        for i, cid in enumerate(b["cut_ids"]):
            assert b["texts"][i] == cuts[cid].supervisions[0].text
            raw = torch.from_numpy(cuts[cid].load_features())
            assert b["feature_lens"][i] == raw.shape[0]
            augmented |= not torch.equal(b["features"][i, : raw.shape[0]], raw)
        assert sum(cuts[c].duration for c in b["cut_ids"]) <= 12.0
    assert augmented  # SpecAugment on

    plain = make_train_loader(
        tiny_data.train_cuts, 12.0, 2, seed=0, num_workers=0, spec_augment=False
    )
    b = next(iter(plain))
    for i, cid in enumerate(b["cut_ids"]):
        raw = torch.from_numpy(cuts[cid].load_features())
        assert torch.equal(b["features"][i, : raw.shape[0]], raw)


def test_train_loader_epochs_and_ranks(tiny_data):
    def ids(loader, epoch):
        set_epoch(loader, epoch)
        return [c for b in loader for c in b["cut_ids"]]

    loader = make_train_loader(
        tiny_data.train_cuts, 8.0, 2, seed=3, num_workers=0, spec_augment=False
    )
    e0, e0_again, e1 = ids(loader, 0), ids(loader, 0), ids(loader, 1)
    assert e0 == e0_again and e0 != e1
    r0 = make_train_loader(
        tiny_data.train_cuts,
        8.0,
        2,
        seed=3,
        world_size=2,
        rank=0,
        num_workers=0,
        spec_augment=False,
    )
    r1 = make_train_loader(
        tiny_data.train_cuts,
        8.0,
        2,
        seed=3,
        world_size=2,
        rank=1,
        num_workers=0,
        spec_augment=False,
    )
    a, b = ids(r0, 0), ids(r1, 0)
    assert a and b and not set(a) & set(b)


def test_train_loader_with_worker(tiny_data):
    loader = make_train_loader(tiny_data.train_cuts, 12.0, 2, seed=0, num_workers=1)
    _check_batch(next(iter(loader)))


@pytest.mark.filterwarnings("ignore:The first cut drawn in batch collection violates")
def test_eval_loader_keeps_all_cuts(tiny_data):
    for path in (tiny_data.dev_cuts, tiny_data.test_cuts, tiny_data.train_cuts):
        expected = [c.id for c in load_manifest(path)]
        got = []
        for b in make_eval_loader(path, max_duration=1.0):  # shorter than any cut
            _check_batch(b)
            got += b["cut_ids"]
        assert sorted(got) == sorted(expected)
    b = next(iter(make_eval_loader(tiny_data.train_cuts, max_duration=1000.0)))
    assert len(b["cut_ids"]) == 9


def test_load_cuts_errors(tiny_data, tmp_path):
    with pytest.raises(AsrqError, match="asrq data prepare librispeech"):
        load_cuts(tmp_path / "librispeech_cuts_dev-clean.jsonl.gz")
    with pytest.raises(AsrqError, match="expected a CutSet"):
        load_cuts(tiny_data.manifest_dir / "librispeech_supervisions_dev-clean.jsonl.gz")
    assert len(load_cuts(tiny_data.dev_cuts)) == 2
