"""The config system: per-head model sections, the upgrade of older flat model layouts,
decode methods checked against the head, dotted paths in errors, every recipe YAML loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from asrq.config import (
    HEAD_METHODS,
    ExperimentConfig,
    ModelConfig,
    from_dict,
    load_config,
    resolve_model_config,
    stored_experiment_config,
    to_dict,
    upgrade_model_dict,
)
from asrq.models import build_model
from asrq.utils.io import AsrqError

ROOT = Path(__file__).resolve().parents[1]
RECIPE_YAMLS = sorted((ROOT / "recipes").rglob("*.yaml"))


def test_there_are_recipe_yamls():
    names = {str(p.relative_to(ROOT)) for p in RECIPE_YAMLS}
    assert {"recipes/mini/config.yaml", "recipes/librispeech/config.yaml"} <= names


@pytest.mark.parametrize("path", RECIPE_YAMLS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_yaml_loads(path: Path):
    cfg = load_config(path)
    assert cfg.decode.method in HEAD_METHODS[cfg.model.head]
    # every key in the file is one the config knows: a dump of the loaded config loads back equal
    assert to_dict(from_dict(ExperimentConfig, to_dict(cfg))) == to_dict(cfg)


def test_a_mistyped_key_fails_with_its_dotted_path(tmp_path: Path):
    p = tmp_path / "cfg.yaml"
    p.write_text("model:\n  rnnt:\n    joinr_dim: 128\n")
    with pytest.raises(AsrqError, match=r"cfg.yaml: unknown key model.rnnt.joinr_dim; known in"):
        load_config(p)
    with pytest.raises(AsrqError, match=r"unknown key model.rnnt.predictor.d_modle"):
        load_config(None, ["model.rnnt.predictor.d_modle=3"])
    with pytest.raises(AsrqError, match=r"model.rnnt.joiner_dim: expected int, got 'x'"):
        load_config(None, ["model.rnnt.joiner_dim=x"])


def test_decode_method_is_checked_against_the_head():
    with pytest.raises(AsrqError, match=r"decode.method 'attention_rescoring' .*model.head 'rnnt'"):
        load_config(None, ["decode.method=attention_rescoring"])
    with pytest.raises(AsrqError, match=r"decode.method 'modified_beam_search' .*'ctc_attention'"):
        load_config(None, ["model.head=ctc_attention", "decode.method=modified_beam_search"])
    cfg = load_config(None, ["model.head=ctc_attention", "decode.method=attention_rescoring"])
    assert cfg.decode.method == "attention_rescoring"


def test_old_flat_model_layout_is_upgraded():
    flat = {
        "head": "rnnt",
        "vocab_size": 48,
        "joiner_dim": 96,
        "ctc_head": False,
        "predictor": {"d_model": 40, "context_size": 3},
        "decoder": {"num_layers": 1},
    }
    up = upgrade_model_dict(flat)
    assert "joiner_dim" not in up and "predictor" not in up and "decoder" not in up
    assert flat["joiner_dim"] == 96  # the input is not changed
    m = from_dict(ModelConfig, up)
    assert (m.rnnt.joiner_dim, m.rnnt.ctc_head) == (96, False)
    assert (m.rnnt.predictor.d_model, m.rnnt.predictor.context_size) == (40, 3)
    assert m.ctc_attention.decoder.num_layers == 1
    # a dict in the current layout passes unchanged
    assert upgrade_model_dict(to_dict(m)) == to_dict(m)
    exp = stored_experiment_config({"model": flat}, "ckpt.pt:config")
    assert to_dict(exp.model) == to_dict(m)
    old = {"model": {**flat, "head": "ctc_attention"}, "decode": {"method": "modified_beam_search"}}
    assert stored_experiment_config(old, "ckpt.pt:config").decode.method == "greedy"
    with pytest.raises(AsrqError, match="ckpt.pt:config: unknown key model.joinr_dim"):
        stored_experiment_config({"model": {"joinr_dim": 3}}, "ckpt.pt:config")


def test_resolve_model_config_returns_a_new_config():
    cfg = ModelConfig()
    out = resolve_model_config(cfg, 48)
    assert (cfg.vocab_size, out.vocab_size) == (0, 48)
    assert resolve_model_config(out, 48).vocab_size == 48
    with pytest.raises(AsrqError, match="model.vocab_size=48 but bpe.model has 50 tokens"):
        resolve_model_config(out, 50, "bpe.model")


def test_every_head_builds_a_model_that_says_its_head():
    for head in HEAD_METHODS:
        cfg = load_config(None, [f"model.head={head}", "model.encoder.num_layers=1"]).model
        model = build_model(resolve_model_config(cfg, 16))
        assert model.head == head


def test_librispeech_recipe_model_size_is_what_the_readme_says():
    from asrq.models.conformer import count_parameters

    cfg = load_config(ROOT / "recipes" / "librispeech" / "config.yaml")
    model = build_model(resolve_model_config(cfg.model, cfg.data.vocab_size))
    assert count_parameters(model) == 30_437_712  # README: "a 30.4M-parameter ... Conformer"
    assert "30.4M-parameter" in (ROOT / "README.md").read_text()


def test_the_head_tables_agree():
    from asrq.decode.heads import DECODERS
    from asrq.models import HEADS

    assert set(HEADS) == set(HEAD_METHODS) == set(DECODERS)
    for head, dec in DECODERS.items():
        assert dec.methods == HEAD_METHODS[head]
