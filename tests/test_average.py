"""Weight averaging (asrq.train.average): the EMA arithmetic and the temporary swap."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from asrq.config import TrainConfig
from asrq.train.average import WeightAverage
from asrq.utils.io import AsrqError


def test_ema_follows_the_warmed_up_decay() -> None:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    avg = WeightAverage(model, decay=0.9, every=2)
    with torch.no_grad():
        model.weight.fill_(1.0)
    avg.update(model, step=1)  # not a multiple of `every`: no-op
    assert float(avg.state["weight"]) == 0.0
    avg.update(model, step=2)  # d = min(0.9, 3/12) ** 2 = 0.0625
    assert float(avg.state["weight"]) == pytest.approx(1 - 0.25**2)
    with torch.no_grad():
        model.weight.fill_(2.0)
    avg.update(model, step=100)  # d = 0.9 ** 2 (the warm-up factor 101/110 > 0.9)
    expected = 0.81 * (1 - 0.25**2) + 0.19 * 2.0
    assert float(avg.state["weight"]) == pytest.approx(expected)


def test_applied_swaps_in_and_restores() -> None:
    model = nn.Linear(2, 2)
    avg = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    trained = model.weight.detach().clone()
    with avg.applied(model):
        assert torch.equal(model.weight, avg.state["weight"])
        assert not torch.equal(model.weight, trained)
    assert torch.equal(model.weight, trained)


def test_bad_decay_is_rejected() -> None:
    with pytest.raises(AsrqError, match="average_decay"):
        TrainConfig(average_decay=1.0)
