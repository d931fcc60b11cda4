"""Supernet warm-up and the deploy-many experiment (asrq.experiments.todm) on the tiny corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from asrq.config import SupernetConfig
from asrq.supernet import SearchSpace, SubnetSpec
from asrq.supernet.train import SupernetTrainer, kd_weight_at
from asrq.testing.data import TinyData
from asrq.testing.models import tiny_supernet_config
from asrq.train.checkpoint import load_model
from asrq.utils.io import AsrqError
from tests.test_supernet import _log, _train_cfg


def test_deploy_many_experiment_writes_todm_json(tiny_data: TinyData, tmp_path: Path) -> None:
    from asrq.experiments.todm import Size, deploy_many

    torch.set_num_threads(1)
    cfg = _train_cfg(tiny_data, tmp_path / "unused")
    cfg.supernet.num_random = 1
    sizes = [
        Size(
            "big",
            SubnetSpec(
                num_layers=2, d_model=64, ffn_dim=128, num_heads=2, joiner_dim=64, predictor_dim=64
            ),
        ),
        Size(
            "mid",
            SubnetSpec(
                num_layers=2, d_model=48, ffn_dim=64, num_heads=2, joiner_dim=32, predictor_dim=32
            ),
        ),
        Size(
            "small",
            SubnetSpec(
                num_layers=1, d_model=32, ffn_dim=64, num_heads=1, joiner_dim=32, predictor_dim=32
            ),
        ),
    ]
    out_of_pool = Size(
        "out",
        SubnetSpec(
            num_layers=1, d_model=48, ffn_dim=128, num_heads=2, joiner_dim=64, predictor_dim=64
        ),
    )
    res = deploy_many(
        cfg, tmp_path / "out", sizes, steps=2, echo=lambda s: None, held_out=[out_of_pool]
    )
    saved = json.loads((tmp_path / "out" / "todm.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert [s["name"] for s in saved["sizes"]] == ["big", "mid", "small", "out"]
    # how the supernet trained each size is stated; the held-out one was never drawn
    assert [s["sampled"] for s in saved["sizes"]] == ["every step", "pool", "every step", "never"]
    assert [s["held_out"] for s in saved["sizes"]] == [False, False, False, True]
    params = [s["params"] for s in saved["sizes"]][:3]
    assert params == sorted(params, reverse=True) and len(set(params)) == 3
    for s in saved["sizes"]:
        for who in ("supernet", "individual"):
            for key in ("wer_dev", "wer_test_clean", "wer_test_clean_streaming", "wer_test_other"):
                e = s[who][key]
                assert e["lo"] <= e["wer"] <= e["hi"] and e["num_utts"] == 2, (s["name"], key, e)
        for split, key in (("dev", "wer_dev"), ("test_clean", "wer_test_clean")):
            d = s["diff"][split]  # paired: slice minus twin on the same utterances
            assert d["lo"] <= d["diff"] <= d["hi"] and d["num_utts"] == 2
            assert d["diff"] == pytest.approx(
                s["supernet"][key]["wer"] - s["individual"][key]["wer"], abs=0.02
            )
    assert "| out | never |" in (tmp_path / "out" / "todm.md").read_text()
    from asrq.decode.evaluate import evaluate

    for s in saved["sizes"]:
        ind = load_model(tmp_path / "out" / "todm" / "individual" / s["name"] / "model.pt")
        assert ind.config.supernet is None and ind.meta["step"] == 2  # trained alone, from scratch
        # the reported WER is that of the saved individual model on the test cuts
        wer = evaluate(ind, tiny_data.test_cuts, method="greedy", progress=False).wer
        assert s["wer_individual"] == round(wer, 2), (s, wer)
    # the random subnet of each step came from the middle size (largest and smallest train anyway)
    assert saved["supernet"]["sample_pool"] == [
        {
            "num_layers": 2,
            "d_model": 48,
            "ffn_dim": 64,
            "num_heads": 2,
            "joiner_dim": 32,
            "predictor_dim": 32,
        }
    ]
    assert saved["supernet_train_minutes"] > 0 and saved["individual_train_minutes_total"] > 0
    assert "| big | every step |" in (tmp_path / "out" / "todm.md").read_text()
    with pytest.raises(AsrqError, match="K >= 3"):
        deploy_many(cfg, tmp_path / "out2", sizes[:2], steps=2)
    with pytest.raises(AsrqError, match="held-out size mid2: .* trained directly"):
        deploy_many(cfg, tmp_path / "out2", sizes, steps=2, held_out=[Size("mid2", sizes[1].spec)])


def test_warmup_trains_the_largest_alone_first(tiny_data: TinyData, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = _train_cfg(tiny_data, tmp_path / "exp", max_steps=3)
    cfg.supernet.warmup_steps = 2
    cfg.supernet.num_random = 1
    SupernetTrainer(cfg, progress=False).run()
    recs = _log(tmp_path / "exp")
    assert [("loss_smallest" in r, "kd_ctc" in r) for r in recs] == [
        (False, False),
        (False, False),
        (True, True),
    ]


def test_sample_pool_draws_random_subnets_from_the_listed_specs() -> None:
    cfg = tiny_supernet_config()
    space = SearchSpace(cfg.supernet.search_space, cfg.model)
    pool = space.pool([{"num_layers": 2, "d_model": 48}, {"d_model": 32, "num_heads": 1}])
    assert pool[0] == SubnetSpec(2, 48, 128, 2, None, 64, 64)  # missing fields: the supernet's
    drawn = [s for step in range(40) for s in space.sandwich(7, step, 2, pool)[2:]]
    assert set(drawn) == set(pool)
    assert drawn == [s for step in range(40) for s in space.sandwich(7, step, 2, pool)[2:]]
    with pytest.raises(AsrqError, match=r"supernet.sample_pool\[1\]: d_model=40 is not one of"):
        space.pool([{"num_layers": 1}, {"d_model": 40}])
    with pytest.raises(AsrqError, match=r"supernet.sample_pool\[0\]: unknown key"):
        space.pool([{"layers": 1}])


def test_kd_weight_schedule() -> None:
    sn = SupernetConfig(kd_weight=0.5, kd_start_step=10, kd_ramp_steps=4)
    assert [kd_weight_at(sn, s) for s in (0, 9, 10, 11, 12, 13, 100)] == [
        0,
        0,
        0.125,
        0.25,
        0.375,
        0.5,
        0.5,
    ]
    assert kd_weight_at(SupernetConfig(kd_weight=0.7), 0) == 0.7


def test_kd_start_step_in_training(tiny_data: TinyData, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = _train_cfg(tiny_data, tmp_path / "exp", max_steps=3)
    cfg.train.log_every = 1
    cfg.supernet.num_random = 0
    cfg.supernet.kd_start_step = 2
    SupernetTrainer(cfg, progress=False).run()
    recs = _log(tmp_path / "exp")
    assert [r["kd_weight"] for r in recs] == [0.0, 0.0, cfg.supernet.kd_weight]
    assert recs[0]["kd_ctc"] == recs[1]["kd_ctc"] == 0.0 and recs[2]["kd_ctc"] > 0
