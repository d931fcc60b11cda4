"""Checkpoints hold tensors and plain data only: they load with ``weights_only=True``, and a
file carrying other pickled objects is refused before any of its code can run."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from asrq.config import to_dict
from asrq.testing.models import make_tiny_checkpoint, tiny_config
from asrq.train.checkpoint import (
    FORMAT,
    load_checkpoint,
    load_model,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from asrq.utils.io import AsrqError


class _Payload:
    """Unpickling this object would create the file ``marker`` (what an attacker's code does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_a_checkpoint_with_a_pickled_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "shared.pt"
    payload = {"format": FORMAT, "config": to_dict(tiny_config()), "model": {}}
    payload["extra"] = _Payload(marker)
    torch.save(payload, bad)  # torch.save pickles anything
    with pytest.raises(AsrqError, match=r"shared.pt: refused: the file holds pickled Python"):
        load_checkpoint(bad)
    with pytest.raises(AsrqError, match=r"shared.pt: refused"):
        load_model(bad)
    assert not marker.exists()  # the payload never ran


def test_model_files_load_with_weights_only(tmp_path: Path) -> None:
    path = make_tiny_checkpoint(tmp_path / "tiny.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and isinstance(raw["bpe_model"], bytes)
    assert load_model(path).config.model.vocab_size == 48


def test_rng_state_is_plain_and_round_trips(tmp_path: Path) -> None:
    state = rng_state()
    assert isinstance(state["torch"], torch.Tensor)
    assert isinstance(state["python"], list) and isinstance(state["numpy"], list)
    save_checkpoint(tmp_path / "rng.pt", {"config": {}, "model": {}, "rng": state})
    loaded = load_checkpoint(tmp_path / "rng.pt")["rng"]
    expected = (torch.rand(3), random.random(), np.random.rand(2))
    torch.rand(5), random.random(), np.random.rand(4)  # move every generator on
    set_rng_state(loaded)
    got = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1]
    assert np.array_equal(got[2], expected[2])


def test_a_checkpoint_in_the_old_flat_model_layout_loads(tmp_path: Path) -> None:
    path = make_tiny_checkpoint(tmp_path / "tiny.pt")
    ckpt = load_checkpoint(path)
    model = ckpt["config"]["model"]
    rnnt = model.pop("rnnt")
    model.pop("ctc_attention")
    model.update(rnnt)  # predictor, joiner_dim and ctc_head at the model level, as before
    assert {"predictor", "joiner_dim", "ctc_head"} <= set(model)
    save_checkpoint(tmp_path / "old.pt", {k: v for k, v in ckpt.items() if k != "format"})
    old, new = load_model(tmp_path / "old.pt"), load_model(path)
    assert to_dict(old.config) == to_dict(new.config)
    a, b = old.model.state_dict(), new.model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
