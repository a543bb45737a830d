"""The README's examples stay true: Python blocks run, and every `bce` command works as shown."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PY_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
SH_BLOCKS = re.findall(r"```sh\n(.*?)```", README, flags=re.S)


def shell_commands():
    """(command, expected exit status) for each `bce` line of the README's sh blocks."""
    out = []
    for block in SH_BLOCKS:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line.startswith("bce "):
                continue
            expected = 0
            m = re.search(r"#\s*exits (\d+)", line)
            if m:
                expected = int(m.group(1))
            out.append((line.split("#")[0].strip(), expected))
    return out


COMMANDS = shell_commands()


def test_readme_has_examples():
    assert len(PY_BLOCKS) >= 2
    assert len(COMMANDS) >= 10
    assert {"eval", "suggest-pos-weight"} <= {c.split()[1] for c, _ in COMMANDS}


def test_first_lines_give_the_two_commands():
    head = "\n".join(README.splitlines()[:12])
    assert "make demo" in head and "make test" in head


@pytest.mark.parametrize("index", range(len(PY_BLOCKS)))
def test_python_block_runs(index):
    exec(compile(PY_BLOCKS[index], f"README.md block {index}", "exec"), {})


def test_shell_examples_run_as_shown(tmp_path):
    """All commands, in order, in one directory (later ones use files earlier ones wrote)."""
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    for command, expected in COMMANDS:
        argv = [sys.executable, "-m", "bce_cli", *shlex.split(command)[1:]]
        res = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
        assert res.returncode == expected, f"{command}\n{res.stderr}"
        assert "Traceback" not in res.stderr
        assert res.stdout.strip(), command
