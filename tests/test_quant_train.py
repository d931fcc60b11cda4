"""``asrq qat train``: a tiny fp32 model fine-tuned with each estimator; the checkpoint carries
its step sizes and resolved quant config, reloads, and resumes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from asrq.config import ExperimentConfig, dump_yaml
from asrq.quant.config import QatConfig
from asrq.quant.fake_quant import WeightFakeQuant
from asrq.quant.modules import quantized_layers
from asrq.quant.train import QatTrainer, load_qat_model
from asrq.testing.data import TinyData, tiny_train_config
from asrq.testing.models import tiny_config
from asrq.train.loop import Trainer
from asrq.utils.io import AsrqError


def _cfg(tiny: TinyData, exp_dir: Path, qat: bool = True, **train) -> ExperimentConfig:
    base = tiny_config(vocab_size=0)
    fields = {k: getattr(base, k) for k in base.__dataclass_fields__}
    cfg = ExperimentConfig(**{**fields, "qat": QatConfig() if qat else None})
    tiny_train_config(cfg, tiny, exp_dir, **train)
    cfg.train.optim.warmup_batches = 2
    cfg.train.loss.warm_steps = 2
    if qat:
        cfg.qat.calib_batches = 2
        cfg.train.average_decay = 0.0  # model.pt holds the trained (not averaged) step sizes
    return cfg


def _losses(exp_dir: Path) -> dict[int, float]:
    out = {}
    for line in (exp_dir / "train_log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "train":
            out[rec["step"]] = rec["loss"]
    return out


@pytest.fixture(scope="module")
def fp32_model(tiny_data: TinyData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    exp = tmp_path_factory.mktemp("fp32")
    Trainer(_cfg(tiny_data, exp, qat=False, max_steps=4), progress=False).run()
    return exp / "model.pt"


@pytest.mark.parametrize("estimator", ["ste", "noise", "squat"])
def test_qat_fine_tunes_with_each_estimator(
    estimator: str, fp32_model: Path, tiny_data: TinyData, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    cfg = _cfg(tiny_data, tmp_path / "qat", max_steps=4)
    cfg.qat.init = str(fp32_model)
    cfg.qat.quant.estimator = estimator
    summary = QatTrainer(cfg, progress=False).run()
    assert summary["steps"] == 4
    losses = _losses(tmp_path / "qat")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses.values()), losses
    # the final model file: weights + learned step sizes + resolved quant config, plain data only
    raw = torch.load(tmp_path / "qat" / "model.pt", map_location="cpu", weights_only=True)
    assert raw["config"]["qat"]["quant"]["estimator"] == estimator
    stored = {k: v for k, v in raw["model"].items() if k.endswith("_fq.scale")}
    assert stored
    loaded = load_qat_model(tmp_path / "qat" / "model.pt")
    layers = quantized_layers(loaded.model)
    assert "encoder.layers.0.ff1.w1" in layers
    state = loaded.model.state_dict()
    for k, v in stored.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)
    # the step sizes were trained away from their initial (max-abs / MSE) values
    w1 = layers["encoder.layers.0.ff1.w1"]
    fresh = WeightFakeQuant(w1.weight, w1.weight_fq.qmax)
    fresh.init_scale(w1.weight, cfg.qat.quant.weight_init)
    assert not torch.equal(fresh.scale, w1.weight_fq.scale)


def test_qat_cli_resume_and_errors(fp32_model: Path, tiny_data: TinyData, tmp_path: Path) -> None:
    from asrq.cli.main import cli

    torch.set_num_threads(1)
    cfg = _cfg(tiny_data, tmp_path / "a", max_steps=4, save_every=2, keep_last=5)
    cfg_path = tmp_path / "qat.yaml"
    cfg_path.write_text(dump_yaml(cfg))
    runner = CliRunner()
    res = runner.invoke(
        cli,
        [
            "qat",
            "train",
            str(cfg_path),
            "--init",
            str(fp32_model),
            "--no-progress",
            "-s",
            "qat.quant.weight_qmax=63",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["steps"] == 4
    # resume from step 2 in a fresh directory: the same next losses
    b = tmp_path / "b"
    (b / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "checkpoints" / "ckpt-2.pt", b / "checkpoints" / "ckpt-2.pt")
    res = runner.invoke(
        cli,
        [
            "qat",
            "train",
            str(cfg_path),
            "--resume",
            "--no-progress",
            "-s",
            f"train.exp_dir={b}",
            "-s",
            "qat.quant.weight_qmax=63",
        ],
    )
    assert res.exit_code == 0, res.output
    la, lb = _losses(tmp_path / "a"), _losses(b)
    assert sorted(lb) == [3, 4]
    for step in (3, 4):
        assert lb[step] == pytest.approx(la[step], rel=1e-5, abs=1e-6)
    # errors: no init, a QAT checkpoint as init, a model config that differs
    res = runner.invoke(
        cli, ["qat", "train", str(cfg_path), "-s", f"train.exp_dir={tmp_path / 'c'}"]
    )
    assert res.exit_code == 2 and "no fp32 checkpoint" in res.output
    res = runner.invoke(
        cli,
        [
            "qat",
            "train",
            str(cfg_path),
            "--init",
            str(tmp_path / "a" / "model.pt"),
            "-s",
            f"train.exp_dir={tmp_path / 'd'}",
        ],
    )
    assert res.exit_code == 2 and "already a QAT checkpoint" in res.output
    with pytest.raises(AsrqError, match="model config differs"):
        bad = _cfg(tiny_data, tmp_path / "e", max_steps=1)
        bad.model.encoder.ffn_dim = 64
        bad.qat.init = str(fp32_model)
        QatTrainer(bad, progress=False)
