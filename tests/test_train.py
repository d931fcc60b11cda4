"""Training loop: a tiny model learns, resume is exact, DDP ranks stay identical."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asrq.config import ExperimentConfig
from asrq.testing.data import TinyData, tiny_train_config
from asrq.testing.models import tiny_config
from asrq.train.checkpoint import load_checkpoint, load_model
from asrq.train.loop import Trainer, sample_chunk


def _cfg(tiny: TinyData, exp_dir: Path, **train) -> ExperimentConfig:
    return tiny_train_config(tiny_config(vocab_size=0), tiny, exp_dir, **train)


def _losses(exp_dir: Path) -> dict[int, float]:
    out = {}
    for line in (exp_dir / "train_log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "train":
            out[rec["step"]] = rec["loss"]
    return out


def test_tiny_model_loss_falls_over_20_steps(tiny_data: TinyData, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = _cfg(tiny_data, tmp_path / "exp", max_steps=20)
    summary = Trainer(cfg, progress=False).run()
    losses = _losses(tmp_path / "exp")
    assert summary["steps"] == 20 and len(losses) == 20
    first = sum(losses[s] for s in (1, 2, 3)) / 3
    last = sum(losses[s] for s in (18, 19, 20)) / 3
    assert last < 0.8 * first, (first, last)
    # the final model file is self-contained: config, weights, BPE
    loaded = load_model(tmp_path / "exp" / "model.pt")
    assert loaded.config.model.vocab_size == loaded.sp.get_piece_size()


def test_resume_gives_the_same_next_losses(tiny_data: TinyData, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    a = tmp_path / "a"
    Trainer(_cfg(tiny_data, a, max_steps=8, save_every=4, keep_last=5), progress=False).run()
    ckpt = a / "checkpoints" / "ckpt-4.pt"
    assert load_checkpoint(ckpt)["train_state"]["step"] == 4
    b = tmp_path / "b"
    (b / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, b / "checkpoints" / "ckpt-4.pt")
    Trainer(_cfg(tiny_data, b, max_steps=8, save_every=4), resume=True, progress=False).run()
    la, lb = _losses(a), _losses(b)
    assert sorted(lb) == [5, 6, 7, 8]
    for step in (5, 6, 7, 8):
        assert lb[step] == pytest.approx(la[step], rel=1e-6, abs=1e-7), step
    wa = load_checkpoint(a / "model.pt")["model"]
    wb = load_checkpoint(b / "model.pt")["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-6, atol=1e-7)


def test_resume_without_checkpoint_is_a_clear_error(tiny_data: TinyData, tmp_path: Path) -> None:
    from asrq.utils.io import AsrqError

    with pytest.raises(AsrqError, match="no checkpoint"):
        Trainer(_cfg(tiny_data, tmp_path / "none", max_steps=1), resume=True, progress=False)


def test_chunk_sampling_is_a_function_of_seed_and_step() -> None:
    cfg = ExperimentConfig().model.streaming
    a = [sample_chunk(cfg, 1, s) for s in range(50)]
    assert a == [sample_chunk(cfg, 1, s) for s in range(50)]
    assert any(c == -1 for c, _ in a) and any(c > 0 for c, _ in a)


DDP_WORKER = """
import sys, torch, torch.distributed as dist
from asrq.config import load_config
from asrq.train.loop import Trainer
cfg = load_config(sys.argv[1])
tr = Trainer(cfg, progress=False)
summary = tr.run()
torch.save(tr.model.state_dict(), f"{sys.argv[2]}/rank{tr.dist.rank}.pt")
"""


@pytest.mark.slow
def test_ddp_two_processes_end_with_identical_weights(tiny_data: TinyData, tmp_path: Path) -> None:
    from asrq.config import dump_yaml

    cfg = _cfg(tiny_data, tmp_path / "exp", max_steps=4)
    cfg.data.max_duration = 8.0
    (tmp_path / "cfg.yaml").write_text(dump_yaml(cfg))
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29533",
            str(tmp_path / "worker.py"),
            str(tmp_path / "cfg.yaml"),
            str(tmp_path),
        ],
        check=True,
        env=env,
        timeout=300,
    )
    w0 = torch.load(tmp_path / "rank0.pt")
    w1 = torch.load(tmp_path / "rank1.pt")
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    losses = _losses(tmp_path / "exp")
    assert sorted(losses) == [1, 2, 3, 4]
    start = [
        json.loads(x) for x in (tmp_path / "exp" / "train_log.jsonl").read_text().splitlines()
    ][0]
    assert start["world_size"] == 2
