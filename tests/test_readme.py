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


def test_architecture_names_every_module_and_only_real_ones():
    """ARCHITECTURE.md stays true: each module it names exists, and each module exists
    in it (data-layer modules are named without their .py)."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`(\w+)\.py`", text))
    data_part = text.split("**Data layer**")[1].split("**Maths.**")[0]
    data_named = set(re.findall(r"`(_\w+)`", data_part))
    package = {p.stem for p in (ROOT / "bce_cli").glob("*.py")} - {"__init__", "__main__"}
    data = {p.stem for p in (ROOT / "bce_cli" / "data").glob("_*.py")} - {"__init__"}
    assert named <= package, named - package
    assert data_named <= data, data_named - data
    assert package <= named | {"_lazy"}, package - named   # _lazy: a 20-line import helper
    assert data <= data_named, data - data_named
