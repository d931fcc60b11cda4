"""TODM supernets through the CLI: ``asrq supernet train``, ``asrq slice``, ``asrq search`` (help,
plain models out, bad specs, Pareto choice, end to end); the library parts are in
test_supernet.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from asrq.config import (
    ExperimentConfig,
    SearchSpaceConfig,
    dump_yaml,
)
from asrq.supernet import SearchSpace, SubnetSpec, Supernet, slice_model
from asrq.testing.data import TinyData, tiny_train_config
from asrq.testing.models import make_tiny_supernet_checkpoint, tiny_supernet, tiny_supernet_config
from asrq.train.checkpoint import load_checkpoint, load_model
from asrq.utils.io import AsrqError

#: encoder overrides of the tiny supernet the CLI tests use (test_supernet.py has the full set)
ENCODERS = {"conformer": {}, "stateformer": {"type": "stateformer", "ssm_heads": 4}}


def _train_cfg(
    tiny: TinyData, exp_dir: Path, encoder: dict | None = None, **train
) -> ExperimentConfig:
    return tiny_train_config(
        tiny_supernet_config(vocab_size=0, encoder=encoder), tiny, exp_dir, **train
    )


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 131, 80, generator=g), torch.tensor([131, 90])


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["supernet"], ["supernet", "train"], ["slice"]], ids=" ".join)
def test_help(args: list[str]) -> None:
    from asrq.cli.main import cli

    res = CliRunner().invoke(cli, [*args, "--help"])
    assert res.exit_code == 0 and "Usage:" in res.output and len(res.output.splitlines()) > 5


@pytest.mark.parametrize("enc", ["conformer", "stateformer"])
def test_slice_cli_writes_a_plain_model(enc: str, tmp_path: Path) -> None:
    from asrq.cli.main import cli

    sup = make_tiny_supernet_checkpoint(tmp_path / "supernet.pt", encoder=ENCODERS[enc])
    spec = tmp_path / "spec.yaml"
    fields = {"num_layers": 1, "d_model": 48, "ffn_dim": 64, "joiner_dim": 32}
    spec.write_text("".join(f"{k}: {v}\n" for k, v in fields.items()))
    res = CliRunner().invoke(
        cli, ["slice", str(sup), "--spec", str(spec), "--out", str(tmp_path / "sub")]
    )
    assert res.exit_code == 0, res.output
    assert "parameters" in res.output
    loaded = load_model(tmp_path / "sub" / "model.pt")
    assert loaded.config.supernet is None
    assert loaded.config.model.encoder.d_model == 48 and loaded.config.model.encoder.num_layers == 1
    assert load_checkpoint(tmp_path / "sub" / "model.pt")["subnet_spec"]["d_model"] == 48
    assert (
        loaded.subnet
        == {"conformer": "L1-d48-f64-h2-j32-p64", "stateformer": "L1-d48-f64-s4-j32-p64"}[enc]
    )
    # it decodes as the supernet does at that spec
    model, cfg = tiny_supernet(encoder=ENCODERS[enc])
    model.eval()
    space = SearchSpace(cfg.supernet.search_space, cfg.model)
    x, x_lens = _inputs(1)
    with (
        torch.no_grad(),
        Supernet(model, cfg.model).active(space.validate(SubnetSpec(**fields))) as sub,
    ):
        e1 = sub.encoder(x, x_lens)[0]
    torch.testing.assert_close(loaded.model.encoder(x, x_lens)[0], e1, rtol=0, atol=1e-6)
    for name in ("largest", "smallest"):
        res = CliRunner().invoke(
            cli, ["slice", str(sup), "--spec", name, "--out", str(tmp_path / name)]
        )
        assert res.exit_code == 0, res.output
    assert load_model(tmp_path / "smallest" / "model.pt").config.model.encoder.d_model == 32
    # the largest subnet is the supernet itself: same tensors under the same names
    largest = load_model(tmp_path / "largest" / "model.pt").model.state_dict()
    whole = load_checkpoint(sup)["model"]
    assert list(largest) == list(whole)
    assert all(torch.equal(largest[k], whole[k]) for k in whole)


def test_slice_cli_bad_spec_writes_nothing(tmp_path: Path) -> None:
    from asrq.cli.main import cli

    sup = make_tiny_supernet_checkpoint(tmp_path / "supernet.pt")
    spec = tmp_path / "bad_spec.yaml"
    spec.write_text("d_model: 40\n")
    out = tmp_path / "sub"
    res = CliRunner().invoke(cli, ["slice", str(sup), "--spec", str(spec), "--out", str(out)])
    assert res.exit_code == 2
    assert (
        "bad_spec.yaml" in res.output
        and "d_model=40" in res.output
        and "Traceback" not in res.output
    )
    assert not out.exists()
    spec.write_text("d_modle: 32\n")
    res = CliRunner().invoke(cli, ["slice", str(sup), "--spec", str(spec), "--out", str(out)])
    assert res.exit_code == 2 and "bad_spec.yaml" in res.output and "d_modle" in res.output
    assert not out.exists()
    # a plain (non-supernet) checkpoint is refused
    from asrq.testing.models import make_tiny_checkpoint

    plain = make_tiny_checkpoint(tmp_path / "plain.pt")
    res = CliRunner().invoke(cli, ["slice", str(plain), "--spec", "smallest", "--out", str(out)])
    assert res.exit_code == 2 and "not a supernet checkpoint" in res.output and not out.exists()


def test_plain_train_refuses_a_supernet_config_and_ctc_attention_is_not_elastic(
    tmp_path: Path,
) -> None:
    from asrq.cli.main import cli
    from asrq.testing.models import tiny_ctc_attention_config

    p = tmp_path / "s.yaml"
    p.write_text(dump_yaml(tiny_supernet_config()))
    res = CliRunner().invoke(cli, ["train", "--config", str(p)])
    assert res.exit_code == 2 and "asrq supernet train" in res.output
    cfg = tiny_ctc_attention_config()
    with pytest.raises(AsrqError, match=r"model.head rnnt only \(got .ctc_attention.\)"):
        SearchSpace(SearchSpaceConfig(), cfg.model)


# --------------------------------------------------------------------------------------------
# search
# --------------------------------------------------------------------------------------------
def test_pareto_front_and_choice() -> None:
    from asrq.supernet.search import Candidate, choose, pareto_front

    # (cost, error): (1, 9) and (2, 5) and (4, 4) are optimal; (3, 6) is beaten by (2, 5); (4, 5) by
    # (4, 4)
    assert pareto_front([(1, 9), (2, 5), (3, 6), (4, 4), (4, 5)]) == [
        True,
        True,
        False,
        True,
        False,
    ]
    cands = [
        Candidate(SubnetSpec(num_layers=n), 0, mb, ms, wer)
        for n, ms, mb, wer in [
            (1, 1.0, 1.0, 30.0),
            (2, 2.0, 2.0, 20.0),
            (3, 3.0, 1.5, 20.0),
            (4, 5.0, 4.0, 10.0),
        ]
    ]
    assert choose(cands, None, None).spec.num_layers == 4
    assert choose(cands, 3.5, None).spec.num_layers == 2  # WER tie at 20: the faster
    assert choose(cands, 3.5, 1.6).spec.num_layers == 3
    with pytest.raises(AsrqError, match="no candidate within"):
        choose(cands, 0.5, None)


def test_search_cli_writes_front_and_best_spec(tiny_data: TinyData, tmp_path: Path) -> None:
    from asrq.cli.main import cli
    from asrq.supernet.spec import load_spec

    torch.set_num_threads(1)
    sup = make_tiny_supernet_checkpoint(tmp_path / "supernet.pt")
    out = tmp_path / "search"
    args = [
        "search",
        str(sup),
        "--out",
        str(out),
        "--cuts",
        str(tiny_data.dev_cuts),
        "--max-utts",
        "2",
        "--num-candidates",
        "4",
        "--repeats",
        "2",
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "search.json").read_text())
    assert len(report["candidates"]) == 4 and (out / "pareto.png").stat().st_size > 0
    names = [c["name"] for c in report["candidates"]]
    assert names[0] == "L2-d64-f128-h2-j64-p64" and names[1] == "L1-d32-f64-h1-j32-p32"
    assert all(
        c["latency_ms"] > 0 and c["size_mb"] > 0 for c in report["candidates"]
    )  # timings: no order asserted
    assert report["pareto_latency"] and report["pareto_size"] and report["best"]["name"] in names
    space = SearchSpace(tiny_supernet_config().supernet.search_space, tiny_supernet_config().model)
    assert load_spec(out / "best_spec.yaml", space).short() == report["best"]["name"]
    res = CliRunner().invoke(cli, [*args, "--budget-ms", "0", "--out", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no candidate within" in res.output


def test_stateformer_without_attention_has_no_head_constraint() -> None:
    """EncoderConfig wants d_model / num_heads even even without attention: a width-30 subnet of
    a Stateformer (no attention; supernet num_heads 2) gets num_heads 1 in its config."""
    from asrq.supernet.spec import subnet_model_config

    model, cfg = tiny_supernet(encoder=ENCODERS["stateformer"])
    model.eval()
    space_cfg = SearchSpaceConfig(**{**cfg.supernet.search_space.__dict__, "d_model": [30, 64]})
    space = SearchSpace(space_cfg, cfg.model)
    small = space.smallest()
    assert small.d_model == 30 and small.ssm_heads == 2 and small.num_heads is None
    assert subnet_model_config(cfg.model, small).encoder.num_heads == 1
    plain, _ = slice_model(model, cfg.model, small)
    x, x_lens = _inputs()
    with torch.no_grad(), Supernet(model, cfg.model).active(small) as sub:
        torch.testing.assert_close(
            sub.encoder(x, x_lens)[0], plain.encoder(x, x_lens)[0], rtol=0, atol=1e-6
        )
    # 45 = 3 heads of 15 fits the MH-SSM, but no num_heads makes an odd width valid
    with pytest.raises(AsrqError, match="d_model: choice 45: .*d_model=45 must be even"):
        SearchSpace(
            SearchSpaceConfig(**{**space_cfg.__dict__, "d_model": [45, 64], "ssm_heads": [3, 4]}),
            cfg.model,
        )


def test_supernet_train_then_slice_end_to_end_cli(tiny_data: TinyData, tmp_path: Path) -> None:
    from asrq.cli.main import cli
    from asrq.decode.evaluate import evaluate

    torch.set_num_threads(1)
    cfg = _train_cfg(tiny_data, tmp_path / "exp")
    (tmp_path / "cfg.yaml").write_text(dump_yaml(cfg))
    res = CliRunner().invoke(
        cli,
        [
            "supernet",
            "train",
            str(tmp_path / "cfg.yaml"),
            "-s",
            "train.max_steps=2",
            "-s",
            "supernet.num_random=1",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(
        cli,
        [
            "slice",
            str(tmp_path / "exp" / "model.pt"),
            "--spec",
            "smallest",
            "--out",
            str(tmp_path / "small"),
        ],
    )
    assert res.exit_code == 0, res.output
    loaded = load_model(tmp_path / "small" / "model.pt")
    assert loaded.config.supernet is None and loaded.subnet == "L1-d32-f64-h1-j32-p32"
    assert evaluate(loaded, tiny_data.dev_cuts, max_utts=2, progress=False).num_utts == 2
