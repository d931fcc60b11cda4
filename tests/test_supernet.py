"""TODM supernets: exact slicing, search space, alpha-divergence, adaptive dropout, training
(sandwich + in-place distillation, resume, DDP) and the CLI."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from asrq.config import (
    ExperimentConfig,
    SearchSpaceConfig,
    SupernetConfig,
    dump_yaml,
    from_dict,
    load_config,
)
from asrq.decode.search import greedy_search
from asrq.decode.streaming import stream_decode_batch
from asrq.decode.torch_backend import TorchRnnt
from asrq.losses.alpha_divergence import adaptive_alpha_divergence, alpha_divergence
from asrq.models.transducer import pad_targets
from asrq.supernet import SearchSpace, SubnetSpec, Supernet, slice_model
from asrq.supernet.distill import transducer_outputs
from asrq.supernet.train import SupernetTrainer, adaptive_dropout
from asrq.testing.data import TinyData, tiny_train_config
from asrq.testing.models import tiny_supernet, tiny_supernet_config
from asrq.train.checkpoint import load_checkpoint
from asrq.utils.io import AsrqError

ENCODERS = {
    "conformer": {},
    "stateformer": {"type": "stateformer", "ssm_heads": 4},
    "stateformer_attn": {"type": "stateformer", "ssm_heads": 4, "ssm_attention": True},
    "conformer_fold2": {"fold": 2},
}


def _specs(space: SearchSpace) -> list[SubnetSpec]:
    g = torch.Generator().manual_seed(3)
    return [space.largest(), space.smallest(), space.sample(g), space.sample(g), space.sample(g)]


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 131, 80, generator=g), torch.tensor([131, 90])


# --------------------------------------------------------------------------------------------
# exact slicing
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("enc", list(ENCODERS), ids=list(ENCODERS))
def test_sliced_model_equals_supernet_at_spec(enc: str) -> None:
    torch.set_num_threads(1)
    model, cfg = tiny_supernet(encoder=ENCODERS[enc])
    model.eval()
    space = SearchSpace(cfg.supernet.search_space, cfg.model)
    sn = Supernet(model, cfg.model)
    x, x_lens = _inputs()
    context = torch.tensor([[0, 5], [7, 9], [-1, 3]])
    chunk, left = cfg.model.streaming.chunk_frames, cfg.model.streaming.left_frames
    seen = set()
    for spec in _specs(space):
        seen.add(spec)
        plain, plain_cfg = slice_model(model, cfg.model, spec)
        assert (
            plain_cfg.encoder.d_model == spec.d_model
            and plain_cfg.encoder.num_layers == spec.num_layers
        )
        assert (
            plain_cfg.rnnt.joiner_dim == spec.joiner_dim
            and plain_cfg.rnnt.predictor.d_model == spec.predictor_dim
        )
        assert not plain.training
        ref = TorchRnnt(plain, chunk, left)
        with torch.no_grad(), sn.active(spec) as sub:
            got = TorchRnnt(sub, chunk, left)
            # full context: encoder output, joiner logits, CTC, greedy search
            e1, l1 = sub.encoder(x, x_lens)
            e2, l2 = plain.encoder(x, x_lens)
            assert e1.shape[-1] == spec.d_model and torch.equal(l1, l2)
            torch.testing.assert_close(e1, e2, rtol=0, atol=1e-6)
            j1 = got.join(got.encode(x, x_lens)[0][:, :, None], got.predict(context)[None, None])
            j2 = ref.join(ref.encode(x, x_lens)[0][:, :, None], ref.predict(context)[None, None])
            torch.testing.assert_close(j1, j2, rtol=0, atol=1e-6)
            torch.testing.assert_close(
                got.ctc_log_probs(x, x_lens)[0], ref.ctc_log_probs(x, x_lens)[0], rtol=0, atol=1e-6
            )
            assert greedy_search(got, *got.encode(x, x_lens)) == greedy_search(
                ref, *ref.encode(x, x_lens)
            )
            # chunked (masked) full-sequence forward and true streaming with states
            c1 = sub.encoder(x, x_lens, chunk_size=chunk, left_chunks=left // chunk)[0]
            c2 = plain.encoder(x, x_lens, chunk_size=chunk, left_chunks=left // chunk)[0]
            torch.testing.assert_close(c1, c2, rtol=0, atol=1e-6)
            s1, s2 = got.init_states(2), ref.init_states(2)
            assert [t.shape for t in s1] == [t.shape for t in s2]
            for w, w_lens in [
                (x[:, :35], torch.tensor([35, 35])),
                (x[:, 32:67], torch.tensor([35, 35])),
            ]:
                o1, v1, s1 = got.encode_chunk(w, w_lens, s1)
                o2, v2, s2 = ref.encode_chunk(w, w_lens, s2)
                torch.testing.assert_close(o1, o2, rtol=0, atol=1e-6)
                for a, b in zip(s1, s2, strict=True):
                    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
            assert stream_decode_batch(got, x, x_lens) == stream_decode_batch(ref, x, x_lens)
    assert len(seen) >= 4  # largest, smallest and at least two distinct random specs


def test_slice_of_the_largest_spec_is_the_supernet() -> None:
    model, cfg = tiny_supernet()
    space = SearchSpace(cfg.supernet.search_space, cfg.model)
    plain, plain_cfg = slice_model(model, cfg.model, space.largest())
    assert plain_cfg == cfg.model
    ref = model.state_dict()
    for k, v in plain.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_subnet_gradients_reach_only_its_slice() -> None:
    model, cfg = tiny_supernet()
    model.train()
    sn = Supernet(model, cfg.model)
    spec = SubnetSpec(
        num_layers=1, d_model=32, ffn_dim=64, num_heads=2, joiner_dim=32, predictor_dim=32
    )
    x, x_lens = _inputs()
    targets, target_lens = pad_targets([[3, 4, 5], [6, 7]], pad=-1)
    with sn.active(spec) as sub:
        res = transducer_outputs(sub, x, x_lens, targets, target_lens, cfg.train.loss)
    (res.losses["pruned"] + res.losses["simple"] + res.losses["ctc"]).backward()
    params = dict(model.named_parameters())
    assert all(p.grad is None for k, p in params.items() if k.startswith("encoder.layers.1."))
    g = params["encoder.embed.out.weight"].grad  # (D, C)
    assert g[:32].abs().sum() > 0 and torch.all(g[32:] == 0)
    g = params["joiner.output_linear.weight"].grad  # (V, J)
    assert g[:, :32].abs().sum() > 0 and torch.all(g[:, 32:] == 0)
    # attention q (D, D): 2 subnet heads of 16 = the first 8 channels of each rotary half (16 wide)
    # of the supernet's 2 heads of 32
    q = params["encoder.layers.0.attn.q.weight"].grad
    used = torch.cat(
        [torch.arange(8), 16 + torch.arange(8), 32 + torch.arange(8), 48 + torch.arange(8)]
    )
    unused = torch.tensor(sorted(set(range(64)) - set(used.tolist())))
    assert torch.all(q[used, :32].abs().sum(dim=1) > 0) and torch.all(q[:, 32:] == 0)
    assert torch.all(q[unused] == 0)


def test_transducer_outputs_match_the_model_forward() -> None:
    model, cfg = tiny_supernet()
    model.eval()
    x, x_lens = _inputs()
    targets, target_lens = pad_targets([[3, 4, 5], [6, 7]], pad=-1)
    with torch.no_grad():
        ref = model(x, x_lens, targets, target_lens, cfg.train.loss, 4, 2)
        got = transducer_outputs(
            model, x, x_lens, targets, target_lens, cfg.train.loss, 4, 2
        ).losses
    for k in ("simple", "pruned", "ctc", "frames"):
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# search space
# --------------------------------------------------------------------------------------------
def test_search_space_largest_smallest_and_sampling() -> None:
    cfg = tiny_supernet_config()
    space = SearchSpace(cfg.supernet.search_space, cfg.model)
    assert space.largest() == SubnetSpec(2, 64, 128, 2, None, 64, 64)
    assert space.smallest() == SubnetSpec(1, 32, 64, 1, None, 32, 32)
    a = [space.sandwich(7, s, 2) for s in range(30)]
    assert a == [space.sandwich(7, s, 2) for s in range(30)]  # a function of (seed, step)
    assert all(len(x) == 4 and x[0] == space.largest() and x[1] == space.smallest() for x in a)
    randoms = {s for x in a for s in x[2:]}
    assert len(randoms) > 5
    for s in randoms:  # only valid specs: d 48 has head dim 48 > 32 with 1 head, so 2 heads
        assert space.validate(s) == s
        if s.d_model == 48:
            assert s.num_heads == 2
    # the spec YAML round trip through the project's config helpers
    spec = randoms.pop()
    assert from_dict(SubnetSpec, yaml.safe_load(spec.dump_yaml())) == spec


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(d_model=[32, 48]), r"largest choice \(48\) must be the supernet's value 64"),
        (dict(d_model=[32, 64, 96]), r"largest choice \(96\)"),
        (dict(ssm_heads=[2, 4]), "conformer encoder has no ssm_heads"),
        (dict(d_model=[34, 64]), "no num_heads choice fits d_model 34"),  # 34/2 odd, 34/1 > 32
        (dict(d_model=[48, 64]), "num_heads: choice 1 fits no d_model choice"),  # 48/1, 64/1 > 32
        (dict(num_layers=[0, 2]), "choices must be >= 1"),
        (dict(predictor_dim=[30, 64]), "multiple of 4"),
    ],
)
def test_search_space_errors(change: dict, match: str) -> None:
    cfg = tiny_supernet_config()
    space = {**cfg.supernet.search_space.__dict__, **change}
    with pytest.raises(AsrqError, match=match):
        SearchSpace(SearchSpaceConfig(**space), cfg.model)


def test_bad_spec_is_a_clear_error() -> None:
    cfg = tiny_supernet_config()
    space = SearchSpace(cfg.supernet.search_space, cfg.model)
    with pytest.raises(
        AsrqError,
        match=r"spec.yaml: d_model=40 is not one of the supernet's choices \[32, 48, 64\]",
    ):
        space.validate(SubnetSpec(d_model=40), where="spec.yaml")
    with pytest.raises(AsrqError, match="head dim .* exceeds the supernet's 32"):
        space.validate(SubnetSpec(d_model=48, num_heads=1))


def test_old_configs_without_supernet_section_load(tmp_path: Path) -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "recipes" / "mini" / "config.yaml")
    assert cfg.supernet is None
    p = tmp_path / "s.yaml"
    p.write_text(dump_yaml(tiny_supernet_config()))
    assert load_config(p).supernet.search_space.d_model == [32, 48, 64]


def test_supernet_recipe_config_validates() -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "recipes" / "mini" / "supernet.yaml")
    space = SearchSpace(cfg.supernet.search_space, cfg.model)
    assert space.size() > 10 and space.largest().d_model == cfg.model.encoder.d_model


# --------------------------------------------------------------------------------------------
# alpha-divergence
# --------------------------------------------------------------------------------------------
P = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
Q = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])


@pytest.mark.parametrize(
    "alpha, clip, expected_row0",
    [
        # r = p / q = [3, 1, 0.2]
        # alpha -1: w = [1/3, 1, 5]; (0.2 (1/3 - 1) + 0.5 (5 - 1)) / ((-1)(-2)) = (-0.13333 + 2) / 2
        (-1.0, 5.0, 0.9333333),
        # clip 4: w = [1/3, 1, 4]: (-0.13333 + 1.5) / 2
        (-1.0, 4.0, 0.6833333),
        # alpha 0.5: w = [sqrt 3, 1, sqrt 0.2]; (0.2 * 0.7320508 + 0.5 * -0.5527864) / (0.5 * -0.5)
        (0.5, 5.0, 0.5199320),
        # alpha 2: w = [9 -> 5 (clip), 1, 0.04]; (0.2 * 4 + 0.5 * -0.96) / (2 * 1)
        (2.0, 5.0, 0.16),
        # alpha 1 (limit): KL(p || q) = 0.6 ln 3 + 0.1 ln 0.2
        (1.0, 5.0, 0.6 * math.log(3) + 0.1 * math.log(0.2)),
        # alpha 0 (limit): KL(q || p) = -(0.2 ln 3 + 0.5 ln 0.2)
        (0.0, 5.0, -(0.2 * math.log(3) + 0.5 * math.log(0.2))),
    ],
)
def test_alpha_divergence_hand_computed(alpha: float, clip: float, expected_row0: float) -> None:
    d = alpha_divergence(P.log(), Q.log(), alpha, clip)
    assert d.shape == (2,)
    assert float(d[0]) == pytest.approx(expected_row0, abs=1e-6)


def test_adaptive_alpha_divergence_takes_the_larger_side() -> None:
    d, use_min = adaptive_alpha_divergence(P.log(), Q.log(), -1.0, 1.0, 5.0)
    # row 0: D_-1 = 0.93333 > KL(p||q) = 0.49822 -> alpha_min
    # row 1: r = [1/3, 1, 5]; D_-1 = (0.6 * 2 + 0.1 * -0.8) / 2 = 0.56 < KL(p||q) = 0.2 ln(1/3) +
    # 0.5 ln 5 = 0.58500
    assert use_min.tolist() == [True, False]
    assert float(d[0]) == pytest.approx(0.9333333, abs=1e-6)
    assert float(d[1]) == pytest.approx(0.2 * math.log(1 / 3) + 0.5 * math.log(5), abs=1e-6)


def test_alpha_divergence_gradient_and_limits() -> None:
    logits = torch.tensor([[0.3, -1.2, 0.5, 2.0], [1.0, 0.0, -0.5, 0.2]], requires_grad=True)
    log_p = torch.tensor([[0.1, -0.4, 0.2, 1.5], [0.8, 0.3, -0.2, 0.0]]).log_softmax(-1)
    for alpha in (-0.7, 0.5, 1.0, 0.0):
        # no clipping active here: AlphaNet's gradient is the plain gradient of D
        d = alpha_divergence(log_p, logits.log_softmax(-1), alpha, clip=1e6)
        (g,) = torch.autograd.grad(d.sum(), logits)
        log_q = logits.log_softmax(-1)
        if alpha == 1.0:
            ref = (log_p.exp() * (log_p - log_q)).sum(-1)
        elif alpha == 0.0:
            ref = (log_q.exp() * (log_q - log_p)).sum(-1)
        else:
            ref = (log_q.exp() * (torch.exp(alpha * (log_p - log_q)) - 1)).sum(-1) / (
                alpha * (alpha - 1)
            )
        (g_ref,) = torch.autograd.grad(ref.sum(), logits)
        torch.testing.assert_close(d.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)
    # the limits are continuous
    lq = logits.detach().log_softmax(-1)
    for a in (0.0, 1.0):
        near = alpha_divergence(log_p, lq, a + 1e-2, clip=1e6)
        torch.testing.assert_close(
            near, alpha_divergence(log_p, lq, a, clip=1e6), rtol=0.05, atol=1e-3
        )
    assert torch.all(alpha_divergence(log_p, log_p, -1.0).abs() < 1e-6)  # zero at q = p


# --------------------------------------------------------------------------------------------
# adaptive dropout
# --------------------------------------------------------------------------------------------
def test_dropout_scales_with_subnet_size() -> None:
    sn_cfg = SupernetConfig(dropout_max=0.2, dropout_min=0.05, dropout_power=1.0)
    assert adaptive_dropout(sn_cfg, 100, 100, 0.1) == pytest.approx(0.2)
    assert adaptive_dropout(sn_cfg, 25, 100, 0.1) == pytest.approx(0.05 + 0.15 * 0.25)
    assert adaptive_dropout(SupernetConfig(dropout_power=2.0), 50, 100, 0.1) == pytest.approx(
        0.1 * 0.25
    )
    assert adaptive_dropout(SupernetConfig(adaptive_dropout=False), 10, 100, 0.1) == 0.1
    # the active subnet runs with its rate
    model, cfg = tiny_supernet()
    sn = Supernet(model, cfg.model)
    space = SearchSpace(cfg.supernet.search_space, cfg.model)
    small, big = space.smallest(), space.largest()
    rate = adaptive_dropout(sn_cfg, sn.num_params(small), sn.num_params(big), 0.1)
    assert 0.05 < rate < 0.2
    with sn.active(small, rate) as sub:
        rates = {m.p for n, m in sub.encoder.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {rate}


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def _train_cfg(
    tiny: TinyData, exp_dir: Path, encoder: dict | None = None, **train
) -> ExperimentConfig:
    return tiny_train_config(
        tiny_supernet_config(vocab_size=0, encoder=encoder), tiny, exp_dir, **train
    )


def _log(exp_dir: Path, event: str = "train") -> list[dict]:
    lines = (exp_dir / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == event]


def test_tiny_supernet_largest_and_smallest_learn(tiny_data: TinyData, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = _train_cfg(tiny_data, tmp_path / "exp", max_steps=30)
    summary = SupernetTrainer(cfg, progress=False).run()
    assert summary["steps"] == 30
    recs = _log(tmp_path / "exp")
    assert [r["step"] for r in recs] == list(range(1, 31))
    for key in ("loss", "loss_smallest"):
        first = sum(r[key] for r in recs[:3]) / 3
        last = sum(r[key] for r in recs[-3:]) / 3
        assert last < 0.8 * first, (key, first, last)
    # every step distils into students that differ from the teacher: both terms are positive
    assert all(r["kd_ctc"] > 0 and r["kd_rnnt"] > 0 for r in recs), recs
    info = _log(tmp_path / "exp", "supernet")[0]
    assert info["smallest_params"] < info["largest_params"]
    # the final file is the supernet with its resolved search space
    ckpt = load_checkpoint(tmp_path / "exp" / "model.pt")
    assert ckpt["config"]["supernet"]["search_space"]["ssm_heads"] == []
    assert ckpt["config"]["supernet"]["search_space"]["d_model"] == [32, 48, 64]


def test_supernet_resume_gives_the_same_next_losses(tiny_data: TinyData, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    enc = ENCODERS["stateformer"]
    a = tmp_path / "a"
    SupernetTrainer(
        _train_cfg(tiny_data, a, enc, max_steps=4, save_every=2, keep_last=5), progress=False
    ).run()
    b = tmp_path / "b"
    (b / "checkpoints").mkdir(parents=True)
    shutil.copy(a / "checkpoints" / "ckpt-2.pt", b / "checkpoints" / "ckpt-2.pt")
    SupernetTrainer(
        _train_cfg(tiny_data, b, enc, max_steps=4, save_every=2), resume=True, progress=False
    ).run()
    la, lb = {r["step"]: r for r in _log(a)}, {r["step"]: r for r in _log(b)}
    assert sorted(lb) == [3, 4]
    for step in (3, 4):
        for key in ("loss", "loss_smallest", "loss_random", "kd_ctc", "kd_rnnt"):
            assert lb[step][key] == pytest.approx(la[step][key], rel=1e-5, abs=1e-6), (step, key)
    # a different search space cannot resume
    cfg = _train_cfg(tiny_data, b, enc, max_steps=6)
    cfg.supernet.search_space.num_layers = [2]
    with pytest.raises(AsrqError, match="search space differs"):
        SupernetTrainer(cfg, resume=True, progress=False)


DDP_WORKER = """
import json, sys, torch
from asrq.config import load_config
from asrq.supernet.spec import SearchSpace
from asrq.supernet.train import SupernetTrainer
drawn = []
orig = SearchSpace.sandwich
def record(self, seed, step, k, pool=()):
    specs = orig(self, seed, step, k, pool)
    drawn.append([s.short() for s in specs])
    return specs
SearchSpace.sandwich = record
tr = SupernetTrainer(load_config(sys.argv[1]), progress=False)
tr.run()
torch.save(tr.model.state_dict(), f"{sys.argv[2]}/rank{tr.dist.rank}.pt")
open(f"{sys.argv[2]}/specs{tr.dist.rank}.json", "w").write(json.dumps(drawn))
"""


@pytest.mark.slow
def test_ddp_ranks_sample_identical_subnets(tiny_data: TinyData, tmp_path: Path) -> None:
    cfg = _train_cfg(tiny_data, tmp_path / "exp", max_steps=3)
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
            "29537",
            str(tmp_path / "worker.py"),
            str(tmp_path / "cfg.yaml"),
            str(tmp_path),
        ],
        check=True,
        env=env,
        timeout=300,
    )
    s0 = json.loads((tmp_path / "specs0.json").read_text())
    s1 = json.loads((tmp_path / "specs1.json").read_text())
    assert len(s0) == 3 and s0 == s1
    assert len({tuple(x) for x in s0}) > 1  # the random subnets change from step to step
    w0, w1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert _log(tmp_path / "exp", "start")[0]["world_size"] == 2
