"""The ``bce`` command.  Thin: parse options, call the library, render, map errors to exit codes.

Importing this module imports neither numba nor pyarrow, so ``bce --help``
stays fast; the commands import the library when they run.
"""

from __future__ import annotations

import os
import sys
import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from . import __version__

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3

app = typer.Typer(
    name="bce",
    help="Exact, fast binary cross-entropy with logits (PyTorch's BCEWithLogitsLoss) over files.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Reduction(str, Enum):
    mean = "mean"
    sum = "sum"
    none = "none"


class EvalFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


class PWFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class NanPolicy(str, Enum):
    error = "error"
    omit = "omit"
    propagate = "propagate"


class Method(str, Enum):
    ratio = "ratio"
    sqrt = "sqrt"
    effective_number = "effective-number"


def _stderr():
    """A console for people (warnings, progress, errors), made when there is something
    to say: a run that says nothing on stderr (``--format json``) never imports rich."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _warn(message: str) -> None:
    """One warning on stderr, never hard-wrapped (a log keeps it on one line to grep); the
    message is plain text: names in it are not read as markup."""
    _stderr().print(f"[yellow]warning:[/] {_escape(message)}", soft_wrap=True)


def _stdout():
    from rich.console import Console

    return Console(highlight=False)


def _fail(message: str, code: int) -> typer.Exit:
    _stderr().print(f"[bold red]bce: error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


def _guard(debug: bool):
    """Map exceptions to exit codes: input errors 2, bugs 3 (Typer would give 1 = failed gate)."""
    from contextlib import contextmanager

    @contextmanager
    def guard():
        try:
            yield
        except typer.Exit:
            raise
        except Exception as err:  # noqa: BLE001 - the one place that turns errors into codes
            from .errors import BCEInputError

            if debug:
                import traceback

                traceback.print_exc()
            if isinstance(err, BCEInputError):
                raise _fail(_escape(str(err)), EXIT_INPUT) from None
            if isinstance(err, OSError):  # the environment (disk full, permissions), not a bug
                where = f"{err.filename}: " if err.filename else ""
                raise _fail(_escape(f"{where}{err.strerror or err}"), EXIT_INPUT) from None
            if isinstance(err, KeyboardInterrupt):
                raise
            raise _fail(f"internal error: {type(err).__name__}: {_escape(str(err))}\n"
                        "  this is a bug; run again with --debug for the traceback",
                        EXIT_INTERNAL) from None

    return guard()


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def check_writable(path: str | None) -> None:
    """Fail early (exit 2) for an output path that cannot be written, before any work."""
    if path is None:
        return
    from .errors import BCEInputError

    target = Path(path)
    if target.is_dir():
        raise BCEInputError("is a directory, not a file to write", file=path)
    if not target.parent.is_dir():
        raise BCEInputError("the output's directory does not exist", file=path)
    if not os.access(target.parent, os.W_OK):
        raise BCEInputError("the output's directory is not writable", file=path)


def _write_atomic(path: str, text: str) -> None:
    from .errors import BCEInputError

    target = Path(path)
    check_writable(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except OSError as err:
        raise BCEInputError(f"cannot write: {err.strerror or err}", file=path) from None
    finally:
        if tmp is not None and Path(tmp).exists():
            Path(tmp).unlink()


def _version(value: bool):
    if value:
        typer.echo(f"bce {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
):
    """Exact, fast binary cross-entropy with logits (PyTorch's BCEWithLogitsLoss) over files.

    Exit status: 0 ok, 1 a gate failed, 2 usage or input error, 3 internal error.
    """


# Options shared by both commands, declared once.
TargetsOpt = Annotated[str | None, typer.Option(
    "--targets", help="Target columns: comma list or globs ([cyan]label_*[/]); .npz: array name.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
BatchRowsOpt = Annotated[int, typer.Option("--batch-rows", min=1,
                                           help="Rows read per batch (bounds memory).")]
ClassDimOpt = Annotated[int, typer.Option("--class-dim", min=1,
                                          help="Class axis of N-D arrays.")]


@app.command("eval", epilog="""[bold]Examples[/]

  bce eval preds.parquet labels.parquet --max-loss 0.35 --format json

  bce eval sample_data/digits.parquet --pos-weight pos_weight.json --report report.json

  bce eval logits.npy targets.npy --reduction none --output losses.npy
""")
def eval_command(
    preds: Annotated[str, typer.Argument(help="Predictions: Parquet file/dir/glob, Arrow, .npy, "
                                               ".npz, CSV, or - for stdin.")],
    labels: Annotated[str | None, typer.Argument(help="Targets, if not in PREDS (rows aligned, "
                                                      "or joined with --on).")] = None,
    logits: Annotated[str | None, typer.Option(
        "--logits", help="Logit columns: comma list or globs ([cyan]logit_*[/]).")] = None,
    targets: TargetsOpt = None,
    on: Annotated[str | None, typer.Option("--on", help="Join PREDS and LABELS on this key "
                                                        "column.")] = None,
    weight: Annotated[str | None, typer.Option(
        "--weight", help="Element weight: a column, a number, C numbers, or a .npy file.")] = None,
    pos_weight: Annotated[str | None, typer.Option(
        "--pos-weight", help="A number, C numbers, a .npy file, or the JSON of "
                             "[cyan]bce suggest-pos-weight[/].")] = None,
    reduction: Annotated[Reduction, typer.Option("--reduction", help="mean (sum / elements), "
                                                 "sum, or none (with --output).")] = Reduction.mean,
    output: Annotated[str | None, typer.Option(
        "--output", help="With --reduction none: per-element losses (.parquet or .npy).")] = None,
    label_smoothing: Annotated[float, typer.Option(
        "--label-smoothing", min=0.0, max=1.0, help="Targets become y*(1-A) + A/2.")] = 0.0,
    ignore_value: Annotated[float | None, typer.Option(
        "--ignore-value", help="Leave out elements whose target equals this (e.g. -1).")] = None,
    from_probs: Annotated[bool, typer.Option(
        "--from-probs", help="Predictions are probabilities, not logits.")] = False,
    nan_policy: Annotated[NanPolicy, typer.Option(
        "--nan-policy", help="NaN (and Arrow nulls): error, omit, or propagate.")
    ] = NanPolicy.error,
    class_dim: ClassDimOpt = 1,
    fmt: Annotated[EvalFormat, typer.Option("--format", help="Report format on stdout.")
                   ] = EvalFormat.table,
    report: Annotated[str | None, typer.Option("--report",
                                               help="Also write the JSON report here.")] = None,
    max_loss: Annotated[float | None, typer.Option(
        "--max-loss", help="Gate: fail (exit 1) if the overall loss exceeds this.")] = None,
    max_class_loss: Annotated[float | None, typer.Option(
        "--max-class-loss", help="Gate: fail if any class's loss exceeds this.")] = None,
    baseline: Annotated[str | None, typer.Option(
        "--baseline", help="Gate: a previous JSON report to compare with.")] = None,
    max_increase: Annotated[float | None, typer.Option(
        "--max-increase", help="With --baseline: allowed absolute increase of any loss.")
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1,
                                                help="Compute threads (default: all cores).")
                       ] = None,
    batch_rows: BatchRowsOpt = 65536,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", help="Progress bar on stderr (default: when a terminal).")
    ] = None,
    debug: DebugOpt = False,
):
    """Compute the loss of PREDS against LABELS, print a report, and gate on it."""
    with _guard(debug):
        from .data import InputSpec
        from .evaluate import EvalOptions, evaluate
        from .report import eval_csv, eval_markdown, print_eval_table, to_json

        spec = InputSpec(preds=preds, labels=labels, logits=logits, targets=targets, on=on,
                         weight=weight, class_dim=class_dim, batch_rows=batch_rows,
                         nan_policy=nan_policy.value, from_probs=from_probs)
        opts = EvalOptions(reduction=reduction.value, pos_weight=pos_weight,
                           label_smoothing=label_smoothing, ignore_value=ignore_value,
                           from_probs=from_probs, output=output, threads=threads,
                           max_loss=max_loss, max_class_loss=max_class_loss, baseline=baseline,
                           max_increase=max_increase)
        check_writable(report)
        check_writable(output)
        show = sys.stderr.isatty() if progress is None else progress
        with _progress(show) as (advance, set_total):
            result = evaluate(spec, opts, warn=_warn, progress=advance, total=set_total)
        if report:
            try:
                _write_atomic(report, to_json(result) + "\n")
            except BaseException:
                if output:  # all or nothing: no loss file without its report
                    Path(output).unlink(missing_ok=True)
                raise
        if fmt is EvalFormat.table:
            print_eval_table(result, _stdout())
        else:
            text = {EvalFormat.json: lambda r: to_json(r) + "\n", EvalFormat.csv: eval_csv,
                    EvalFormat.markdown: eval_markdown}[fmt](result)
            sys.stdout.write(text)
            sys.stdout.flush()
    if not result["passed"]:
        for f in result["failures"]:
            _stderr().print(f"[bold red]gate failed:[/] {_escape(f)}")
        raise typer.Exit(EXIT_GATE)


def _progress(show: bool):
    from contextlib import contextmanager

    @contextmanager
    def bar():
        if not show:
            yield (None, None)
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("reading"), BarColumn(), TextColumn("{task.completed} rows"),
                      TimeRemainingColumn(), console=_stderr(), transient=True,
                      redirect_stdout=False, redirect_stderr=False) as p:
            task = p.add_task("rows", total=None)
            yield (lambda n: p.advance(task, n), lambda t: p.update(task, total=t))

    return bar()


@app.command("suggest-pos-weight", epilog="""[bold]Examples[/]

  bce suggest-pos-weight labels.parquet --output pos_weight.json

  bce suggest-pos-weight labels.npy --method sqrt --clip-max 50 --format csv
""")
def suggest_pos_weight_command(
    labels: Annotated[str, typer.Argument(help="Targets: Parquet, Arrow, .npy, .npz, CSV, or -.")],
    targets: TargetsOpt = None,
    method: Annotated[Method, typer.Option(
        "--method", help="ratio = n_neg/n_pos; sqrt of it; effective-number (with --beta).")
    ] = Method.ratio,
    beta: Annotated[float, typer.Option("--beta", help="For effective-number, in (0, 1).")
                    ] = 0.999,
    clip_max: Annotated[float | None, typer.Option("--clip-max", help="Upper bound on weights.")
                        ] = None,
    fmt: Annotated[PWFormat, typer.Option("--format", help="Output format on stdout.")
                   ] = PWFormat.table,
    output: Annotated[str | None, typer.Option("--output", help="Write the JSON here.")] = None,
    class_dim: ClassDimOpt = 1,
    batch_rows: BatchRowsOpt = 65536,
    debug: DebugOpt = False,
):
    """Suggest a per-class pos_weight (n_neg / n_pos) from the targets' class counts."""
    with _guard(debug):
        from .evaluate import suggest
        from .report import pos_weight_csv, print_pos_weight_table, to_json

        check_writable(output)
        result = suggest(labels, targets=targets, method=method.value, beta=beta,
                         clip_max=clip_max, batch_rows=batch_rows, class_dim=class_dim,
                         warn=_warn)
        if output:
            _write_atomic(output, to_json(result) + "\n")
        if fmt is PWFormat.table:
            print_pos_weight_table(result, _stdout())
        else:
            text = to_json(result) + "\n" if fmt is PWFormat.json else pos_weight_csv(result)
            sys.stdout.write(text)
            sys.stdout.flush()


@app.command("warmup", epilog="""[bold]Examples[/]

  bce warmup                                   # into the package's __pycache__

  NUMBA_CACHE_DIR=/opt/bce-cache bce warmup    # a directory a CI cache step keeps
""")
def warmup_command(debug: DebugOpt = False):
    """Compile every kernel form into the cache, so that large inputs can take the
    compiled kernels without waiting for a compiler (a Docker image layer, a CI
    cache step).  Small and mid-size inputs never need it."""
    with _guard(debug):
        import time

        from . import kernels

        err = _stderr()
        start = time.perf_counter()
        times = {}

        def report(form, seconds):
            times[form.name] = seconds
            err.print(f"  {form.name:<24} {seconds:5.2f} s")

        forms = kernels.warmup(report)
        slowest = max(times, key=times.get)
        where = sorted({kernels.cache_path(f) or "nowhere (no writable cache directory: set "
                        "NUMBA_CACHE_DIR)" for f in forms})
        typer.echo(f"bce warmup: {len(forms)} kernel forms ready in "
                   f"{time.perf_counter() - start:.1f} s (slowest {slowest}, "
                   f"{times[slowest]:.2f} s), cached in {', '.join(where)}")


def main() -> None:
    app()
