"""Help, usage errors and shell completion: what a newcomer reads first."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from bce_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
BCE = [sys.executable, "-m", "bce_cli"]
SCRIPT = Path(sys.executable).parent / "bce"
COMMANDS = ("eval", "suggest-pos-weight", "warmup")
runner = CliRunner()


def _help(*args) -> str:
    res = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_values_plainly(command):
    text = _help(command)
    for odd in ("<bool>", "<str>", "{preds}", "{labels}", "{PREDS}", "[[LABELS]]"):
        assert odd not in text, odd
    if command == "eval":
        assert "Usage: bce eval [OPTIONS] PREDS [LABELS]" in text
        for option, metavar in [("--logits", "COLUMNS"), ("--on", "COLUMN"),
                                ("--output", "PATH"), ("--report", "PATH"),
                                ("--baseline", "REPORT")]:
            line = next(ln for ln in text.splitlines() if option + " " in ln)
            assert metavar in line, line


def _examples(command: str) -> list[list[str]]:
    epilog = typer.main.get_command(app).commands[command].epilog
    lines = [ln.strip() for ln in epilog.splitlines() if ln.strip().startswith("bce ")]
    assert lines, f"no examples in {command} --help"
    return [shlex.split(ln.split("#")[0])[1:] for ln in lines]


@pytest.fixture
def example_dir(tmp_path, monkeypatch):
    """The files the help's examples name, made from the bundled sample data."""
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    shutil.copy(ROOT / "sample_data" / "digits_preds.parquet", tmp_path / "preds.parquet")
    shutil.copy(ROOT / "sample_data" / "digits_labels.parquet", tmp_path / "labels.parquet")
    shutil.copy(ROOT / "sample_data" / "digits_logits.npy", tmp_path / "logits.npy")
    targets = np.load(ROOT / "sample_data" / "digits_targets.npy")
    np.save(tmp_path / "targets.npy", targets)
    np.save(tmp_path / "labels.npy", targets)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", ["suggest-pos-weight", "eval"])
def test_every_help_example_runs(example_dir, command):
    """Each example of `bce COMMAND --help` runs as shown (gates may fail: exit 1)."""
    for args in _examples(command):
        res = runner.invoke(app, args)
        assert res.exit_code in (0, 1), f"bce {shlex.join(args)}: {res.output}"
        assert "error" not in res.stderr, res.stderr
        for i, arg in enumerate(args[:-1]):
            if arg in ("--output", "--report"):
                assert (example_dir / args[i + 1]).stat().st_size > 0


def test_warmup_examples_name_only_its_options():
    """`bce warmup` compiles every kernel (a minute): its examples are checked to parse."""
    params = {o for p in typer.main.get_command(app).commands["warmup"].params for o in p.opts}
    for args in _examples("warmup"):
        assert args[0] == "warmup"
        assert all(a in params for a in args[1:] if a.startswith("-")), args


@pytest.mark.parametrize("args, needle", [
    (["eval", "a.npy", "b.npy", "--reduction", "avg"], "'--reduction'"),
    (["eval", "a.npy", "b.npy", "--threads", "0"], "'--threads'"),
    (["eval", "a.npy", "--no-such-option"], "--no-such-option"),
    (["eval"], "PREDS"),
    (["no-such-command"], "no-such-command"),
])
def test_usage_errors_take_two_lines(args, needle):
    res = subprocess.run([*BCE, *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2, res.stderr
    assert lines[0].startswith("bce") and "error:" in lines[0] and needle in lines[0], lines
    assert lines[1].startswith("Try 'bce") and "-h' for help." in lines[1]
    assert "╭" not in res.stderr and "Traceback" not in res.stderr
    assert res.stdout == ""


def test_bare_bce_prints_help():
    res = subprocess.run(BCE, capture_output=True, text=True, timeout=60)
    assert res.returncode in (0, 2)
    assert "Usage: bce" in res.stdout + res.stderr and "eval" in res.stdout + res.stderr


@pytest.mark.skipif(not SCRIPT.exists(), reason="the bce script is not installed next to python")
def test_shell_completion_completes_options():
    env = {**os.environ, "_BCE_COMPLETE": "complete_bash", "COMP_WORDS": "bce eval --max",
           "COMP_CWORD": "2"}
    res = subprocess.run([str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert set(res.stdout.split()) == {"--max-loss", "--max-class-loss", "--max-increase",
                                     "--max-group-loss", "--max-ece"}
    shown = runner.invoke(app, ["--show-completion", "bash"])
    assert shown.exit_code == 0 and "_BCE_COMPLETE" in shown.stdout
