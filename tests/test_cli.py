"""Every CLI command answers --help with a description of what it does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from asrq.cli.main import cli

COMMANDS = [
    [],
    ["data"],
    ["data", "synth"],
    ["data", "prepare"],
    ["data", "prepare", "librispeech"],
    ["data", "bpe"],
    ["train"],
    ["decode"],
    ["export"],
    ["transcribe"],
    ["bench"],
    ["supernet"],
    ["supernet", "train"],
    ["slice"],
    ["search"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "asrq")
def test_help(args: list[str]) -> None:
    res = CliRunner().invoke(cli, [*args, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output
    # a real description, not just the usage line
    assert len(res.output.splitlines()) > 5


def test_console_script_and_recipe_help() -> None:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "asrq.cli.main", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "asrq" in out.stdout
    for recipe in ("mini", "librispeech"):
        out = subprocess.run(
            [sys.executable, str(root / "recipes" / recipe / "run.py"), "--help"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "--stages" in out.stdout
    for script in ("compare_models.py", "todm_experiment.py"):
        out = subprocess.run(
            [sys.executable, str(root / "recipes" / "mini" / script), "--help"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "--steps" in out.stdout


def test_bad_override_is_a_one_line_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["train", "-s", "model.encoder.num_layerz=3"])
    assert res.exit_code == 2
    assert "num_layerz" in res.output and "Traceback" not in res.output
