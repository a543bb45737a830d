"""A bounded fuzzer for the command line: malformed and adversarial inputs.

It writes valid seed inputs (Parquet, Feather v1/v2, Arrow streams, .npy, .npz,
CSV, pos_weight and baseline JSON), mutates one of them per case (bit flips,
truncation, spliced garbage, header and structure edits), runs ``bce`` on it in
a fresh process with a time limit, and checks what a user must always get:

- exit status 0, 1 or 2 (never a signal, a hang, or 3 = internal error);
- no traceback; an input error (2) in at most three lines (error, hint) of
  printable text that names the file or option at fault;
- no output or report file after an error, and no temporary file left behind.

``python -m tests.fuzz --seconds 60`` (``make fuzz``) runs cases until the time is
up and saves each failure (command, input, output) under ``.fuzz-failures/``;
``tests/test_fuzz.py`` runs a fixed handful of cases in the suite.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BCE = [sys.executable, "-m", "bce_cli"]
TIMEOUT_S = 30
N_ROWS, CLASSES = 50, ["cat", "dog", "bird"]


# ------------------------------------------------------------------------- seeds
def write_seeds(d: Path) -> None:
    """Valid inputs of every format, small enough that a case takes a fraction of a second."""
    import warnings

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.feather as feather
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_ROWS, len(CLASSES))).astype(np.float32)
    y = (rng.random((N_ROWS, len(CLASSES))) < 0.4).astype(np.float32)
    ids = [f"r{i}" for i in range(N_ROWS)]
    preds = pa.table({"id": ids, **{c: x[:, i] for i, c in enumerate(CLASSES)}})
    labels = pa.table({"id": ids, **{c: y[:, i] for i, c in enumerate(CLASSES)}})
    both = pa.table({**{f"logit_{c}": x[:, i] for i, c in enumerate(CLASSES)},
                     **{f"label_{c}": y[:, i] for i, c in enumerate(CLASSES)}})
    pq.write_table(preds, d / "preds.parquet", row_group_size=20)
    pq.write_table(labels, d / "labels.parquet")
    pq.write_table(pa.table({"logits": list(x), "targets": list(y)}), d / "lists.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feather.write_feather(both, d / "both_v1.feather", version=1)
    feather.write_feather(both, d / "both.arrow", compression="uncompressed")
    with ipc.new_stream(d / "both.arrows", both.schema) as w:
        w.write_table(both, max_chunksize=20)
    pacsv.write_csv(both, d / "both.csv")
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", y)
    np.save(d / "w.npy", np.ones(len(CLASSES)))
    np.savez(d / "xy.npz", logits=x, targets=y)
    (d / "pw.json").write_text(json.dumps({"classes": CLASSES, "pos_weight": [1.5, 2.0, 0.5]}))
    subprocess.run([*BCE, "eval", str(d / "x.npy"), str(d / "y.npy"), "--format", "json",
                    "--report", str(d / "base.json")], capture_output=True, check=True,
                   timeout=TIMEOUT_S)


# (seed file, how it is used); {f} is the mutated copy, other names are seeds.
USES = {
    "preds.parquet": [["eval", "{f}", "labels.parquet"], ["eval", "{f}", "labels.parquet",
                                                          "--on", "id"]],
    "labels.parquet": [["eval", "preds.parquet", "{f}"], ["suggest-pos-weight", "{f}"]],
    "lists.parquet": [["eval", "{f}"]],
    "both_v1.feather": [["eval", "{f}"]],
    "both.arrow": [["eval", "{f}"], ["suggest-pos-weight", "{f}", "--targets", "label_*"]],
    "both.arrows": [["eval", "{f}"], ["eval", "-", "<{f}"]],
    "both.csv": [["eval", "{f}"], ["eval", "-", "<{f}"]],
    "x.npy": [["eval", "{f}", "y.npy"]],
    "y.npy": [["eval", "x.npy", "{f}"], ["suggest-pos-weight", "{f}"]],
    "w.npy": [["eval", "x.npy", "y.npy", "--weight", "{f}"],
              ["eval", "x.npy", "y.npy", "--pos-weight", "{f}"]],
    "xy.npz": [["eval", "{f}", "--logits", "logits", "--targets", "targets"]],
    "pw.json": [["eval", "x.npy", "y.npy", "--pos-weight", "{f}"]],
    "base.json": [["eval", "x.npy", "y.npy", "--baseline", "{f}", "--max-increase", "0.1"]],
}
OUTPUTS = [[], ["--report", "out.json"], ["--reduction", "none", "--output", "out.npy"],
           ["--reduction", "none", "--output", "out.parquet"]]


# ---------------------------------------------------------------------- mutators
def _bitflips(data: bytes, rnd: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.choice([1, 1, 2, 4, 16])):
        i = rnd.randrange(len(b))
        b[i] ^= 1 << rnd.randrange(8)
    return bytes(b)


def _truncate(data: bytes, rnd: random.Random) -> bytes:
    return data[:rnd.randrange(len(data))]


def _splice(data: bytes, rnd: random.Random) -> bytes:
    i = rnd.randrange(len(data) + 1)
    junk = rnd.choice([os.urandom(rnd.randrange(1, 64)), b"\xff" * 8, b"\x00" * 16,
                       b"nan", b"[[[[", b"\"", b"\n\n", "é".encode("latin-1")])
    return data[:i] + junk + data[i + rnd.randrange(0, 8):]


def _bytes_edit(data: bytes, rnd: random.Random) -> bytes:
    """Overwrite a run of bytes with a boundary value (lengths, counts, offsets)."""
    b = bytearray(data)
    i = rnd.randrange(len(b))
    value = rnd.choice([b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\x00\x00\x00\x00",
                        b"\xff\xff\xff\xff\xff\xff\xff\x7f"])
    b[i:i + len(value)] = value
    return bytes(b[:len(data)])


def _text_edit(data: bytes, rnd: random.Random) -> bytes:
    """Structure edits of text formats (CSV header, JSON values, .npy header)."""
    text = data.decode("latin-1")
    edits = [
        lambda t: t.replace("cat", "dog", 1),                      # duplicate column / class
        lambda t: t.replace("[", "[" * 5000, 1),                   # deep nesting
        lambda t: t.replace("1.5", '"x"', 1),                       # a string for a number
        lambda t: t.replace("1.5", "[1, 2]", 1),                    # a list for a number
        lambda t: t.replace("1.5", "-1", 1),                        # negative weight
        lambda t: t.replace("1.5", "Infinity", 1),                  # infinite weight
        lambda t: t.replace('"loss": ', '"loss": "x", "_": ', 1),   # a string loss
        lambda t: t.replace('"classes": [', '"classes": "x", "_": [', 1),
        lambda t: t.replace("(50, 3)", "(50, 3", 1),                # unclosed .npy header
        lambda t: t.replace("(50, 3)", "(5000000000, 3)", 1),       # a shape past the data
        lambda t: t.replace("'<f4'", "'|O'", 1),                     # object dtype
        lambda t: t.replace("False", "True", 1),                     # fortran order
        lambda t: "\xff\xfe" + t,                                    # not UTF-8
        lambda t: t.replace("\n", "\n,,,\n", 1),                    # ragged CSV row
    ]
    return rnd.choice(edits)(text).encode("latin-1")


MUTATORS = [_bitflips, _truncate, _splice, _bytes_edit, _text_edit]


# ------------------------------------------------------------------------ a case
@dataclass
class Case:
    seed_file: str
    mutator: str
    args: list
    rc: int | None = None
    stderr: str = ""
    problems: list = field(default_factory=list)


def _named(stderr: str, args: list, mutated: str) -> bool:
    names = [Path(a.lstrip("<")).name for a in args] + [mutated, "<stdin>", "stdin"]
    return any(n and n in stderr for n in names) or "--" in stderr


def run_case(work: Path, seeds: Path, rnd: random.Random) -> Case:
    seed_file = rnd.choice(sorted(USES))
    mutate = rnd.choice(MUTATORS)
    data = (seeds / seed_file).read_bytes()
    mutated = f"m_{seed_file}"
    for name in os.listdir(seeds):
        shutil.copy(seeds / name, work / name)
    (work / mutated).write_bytes(mutate(data, rnd) if data else data)
    template = rnd.choice(USES[seed_file])
    extra = rnd.choice(OUTPUTS) if template[0] == "eval" else []
    args = [a.replace("{f}", mutated) for a in template] + extra
    stdin = None
    if args[-1].startswith("<"):  # a file on standard input
        stdin = open(work / args.pop()[1:], "rb")  # noqa: SIM115 - closed below
    case = Case(seed_file, mutate.__name__, args)
    try:
        res = subprocess.run([*BCE, *args, "--format", "json"] if args[0] == "eval"
                             else [*BCE, *args], cwd=work, stdin=stdin, capture_output=True,
                             timeout=TIMEOUT_S, env={**os.environ, "COLUMNS": "100"})
    except subprocess.TimeoutExpired:
        case.problems.append(f"no answer after {TIMEOUT_S} s (a hang?)")
        return case
    finally:
        if stdin is not None:
            stdin.close()
    case.rc = res.returncode
    case.stderr = err = res.stderr.decode("utf-8", "replace")
    if res.returncode < 0:
        case.problems.append(f"killed by signal {-res.returncode}")
    elif res.returncode not in (0, 1, 2):
        case.problems.append(f"exit status {res.returncode}")
    if "Traceback" in err:
        case.problems.append("traceback on stderr")
    if res.returncode == 2:
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning")]
        if len(lines) > 3:
            case.problems.append(f"error message of {len(lines)} lines")
        if any(not (ch.isprintable() or ch in "\n\t") for ch in err):
            case.problems.append("unprintable characters in the message")
        if not _named(err, args, mutated):
            case.problems.append("the message names neither the file nor an option")
        for out in ("out.json", "out.npy", "out.parquet"):
            if (work / out).exists():
                case.problems.append(f"{out} written although the run failed")
    left = [n for n in os.listdir(work) if n.endswith(".tmp")]
    if left:
        case.problems.append(f"temporary files left: {left}")
    return case


def run(seconds: float | None = None, cases: int | None = None, seed: int = 0,
        save: Path | None = None, workdir: Path | None = None, log=print) -> list[Case]:
    """Run cases until ``seconds`` pass or ``cases`` ran; return the failed ones."""
    import tempfile

    rnd = random.Random(seed)
    failures: list[Case] = []
    counts: dict = {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        seeds = Path(tmp) / "seeds"
        seeds.mkdir()
        write_seeds(seeds)
        start, n = time.monotonic(), 0
        while (cases is None or n < cases) and \
                (seconds is None or time.monotonic() - start < seconds):
            work = Path(tmp) / f"case{n}"
            work.mkdir()
            case = run_case(work, seeds, rnd)
            counts[case.rc] = counts.get(case.rc, 0) + 1
            if case.problems:
                failures.append(case)
                log(f"FAIL {case.seed_file} {case.mutator}: bce {' '.join(case.args)}: "
                    f"{'; '.join(case.problems)}\n  {case.stderr.strip()[:300]}")
                if save is not None:
                    dest = save / f"seed{seed}-case{n}"
                    shutil.copytree(work, dest, dirs_exist_ok=True)
                    (dest / "case.json").write_text(json.dumps(case.__dict__, indent=2))
            else:
                shutil.rmtree(work)
            n += 1
    log(f"{n} cases in {time.monotonic() - start:.0f} s: exit status counts "
        f"{dict(sorted(counts.items(), key=str))}, {len(failures)} failure(s)")
    return failures
