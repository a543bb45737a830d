"""Feather v1 files, read in a child process so that a corrupt one cannot crash bce."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.ipc as ipc

from bce_cli.errors import BCEInputError, printable

from ._paths import Resolved
from ._sources import _READ_ERRORS, _open_error

# Feather v1 (deprecated by pyarrow 25) is read in a child process: pyarrow's v1 reader
# trusts the file's metadata, and a few flipped bits can make it crash the process
# inside ``feather.read_table`` itself, before any validation could run (4 of 13
# bit-flipped files did).  The child hands the table back as an Arrow IPC stream,
# which is validated here like any other input.  Cost: one Python start (~0.3 s)
# per Feather v1 file, and its data in memory once more while it is handed over.
_FEATHER_V1_CHILD = """
import sys, warnings
warnings.simplefilter("ignore")
import pyarrow as pa, pyarrow.feather as feather, pyarrow.ipc as ipc
src = sys.argv[1] if len(sys.argv) > 1 else pa.BufferReader(sys.stdin.buffer.read())
try:
    table = feather.read_table(src)
    table.validate(full=True)
except Exception as exc:
    sys.stderr.write(str(exc))
    sys.exit(2)
with ipc.new_stream(pa.PythonFile(sys.stdout.buffer, mode="w"), table.schema) as w:
    w.write_table(table)
"""


def read_feather_v1(res: Resolved) -> pa.Table:
    """The whole table of a Feather v1 file, read in a child process (see above)."""
    import subprocess
    import sys

    if res.buffer is None and res.local:
        argv, data = [str(res.files[0])], None
    else:
        argv = []
        data = res.buffer.to_pybytes() if res.buffer is not None else res.read_bytes(
            res.files[0])
    try:
        # -I: isolated, so that no pyarrow.py (or anything) in the current directory
        # or on PYTHONPATH is imported in place of the real one and run.
        done = subprocess.run([sys.executable, "-I", "-c", _FEATHER_V1_CHILD, *argv],
                              input=data, capture_output=True, check=False)
    except OSError as exc:
        raise BCEInputError(f"cannot start the Feather v1 reader: {exc}",
                            file=res.display) from None
    if done.returncode < 0:
        raise BCEInputError("the Feather v1 reader crashed on this file: it is corrupt",
                            file=res.display, hint="rewrite it as Arrow IPC / Feather v2 "
                            "(pyarrow.feather.write_feather) or Parquet")
    said = done.stderr.decode("utf-8", "replace").strip()
    if done.returncode == 2:  # the reader refused the file
        raise _open_error(printable(said) or "exit status 2", res.display)
    if done.returncode != 0:  # the reader could not run (its last line says why): not the file
        last = printable(said.splitlines()[-1]) if said else f"exit status {done.returncode}"
        raise BCEInputError(f"the Feather v1 reader could not run: {last}", file=res.display)
    try:
        table = ipc.open_stream(pa.py_buffer(done.stdout)).read_all()
        table.validate(full=True)
    except _READ_ERRORS as exc:
        raise _open_error(exc, res.display) from None
    return table

