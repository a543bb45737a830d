"""The ``bce`` command.  Thin: parse options, call the library, render, map errors to exit codes.

Importing this module imports neither numba nor pyarrow, so ``bce --help``
stays fast; the commands import the library when they run.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Annotated

import typer

from . import __version__
from ._shell import (
    EXIT_GATE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    check_stdout,
    click_error_class,
    err_console,
    escape,
    guard,
    out_console,
    report_on_stdout,
    to_devnull,
    usage_error,
    warn,
)
from .choices import Device, Engine, EvalFormat, Method, NanPolicy, PosWeightFormat, Reduction

app = typer.Typer(
    name="bce",
    help="Exact, fast binary cross-entropy with logits (PyTorch's BCEWithLogitsLoss) over files.",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
    "--targets", metavar="COLUMNS",
    help="Target columns: comma list or globs ([cyan]label_*[/]); .npz: array name.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
BatchRowsOpt = Annotated[int, typer.Option("--batch-rows", min=1,
                                           help="Rows read per batch (bounds memory).")]
ClassDimOpt = Annotated[int, typer.Option("--class-dim", min=1,
                                          help="Class axis of N-D arrays.")]
EngineOpt = Annotated[Engine, typer.Option(
    "--engine", help="local (this process) or dask (a Dask cluster's workers; Parquet "
    "inputs; pip install 'bce-cli\\[dask]'). Same report.")]
SchedulerOpt = Annotated[str | None, typer.Option(
    "--scheduler", metavar="ADDRESS",
    help="With --engine dask: a scheduler's address (tcp://host:8786), or local / local:N "
         "(N worker processes here; default one per core).")]
WeightOpt = Annotated[str | None, typer.Option(
    "--weight", metavar="WEIGHT",
    help="Element weight: a column, a number, C numbers, or a .npy file.")]
PosWeightOpt = Annotated[str | None, typer.Option(
    "--pos-weight", metavar="POS_WEIGHT",
    help="A number, C numbers, a .npy file, or the JSON of [cyan]bce suggest-pos-weight[/].")]
SmoothingOpt = Annotated[float, typer.Option(
    "--label-smoothing", min=0.0, max=1.0, help="Targets become y*(1-A) + A/2.")]
IgnoreOpt = Annotated[float | None, typer.Option(
    "--ignore-value", help="Leave out elements whose target equals this (e.g. -1).")]
FromProbsOpt = Annotated[bool, typer.Option(
    "--from-probs", help="Predictions are probabilities, not logits.")]
FormatOpt = Annotated[EvalFormat, typer.Option("--format", help="Report format on stdout.")]
ReportOpt = Annotated[str | None, typer.Option("--report", metavar="PATH",
                                               help="Also write the JSON report here.")]
ByOpt = Annotated[str | None, typer.Option(
    "--by", metavar="COLUMN",
    help="Also report each value of this column of the predictions or LABELS "
         "(a split, a country, a source; at most 100,000 values).")]
ConfidenceOpt = Annotated[float, typer.Option(
    "--confidence", metavar="P",
    help="Confidence of every interval (rows as the independent units).")]
TimeoutOpt = Annotated[float | None, typer.Option(
    "--timeout", metavar="SECONDS",
    help="With --engine dask: cancel the job (exit 2) if it takes longer than this.")]


@app.command("eval", epilog=(
    "[bold]Examples[/]\n\n"
    "  bce eval preds.parquet labels.parquet --max-loss 0.35 --format json\n\n"
    "  bce suggest-pos-weight sample_data/digits_labels.parquet --output pos_weight.json\n\n"
    "  bce eval sample_data/digits_preds.parquet sample_data/digits_labels.parquet "
    "--pos-weight pos_weight.json --report report.json\n\n"
    "  bce eval logits.npy targets.npy --reduction none --output losses.npy\n\n"
    "  bce eval sample_data/digits_preds.parquet sample_data/digits_labels.parquet "
    "--metrics all --min-auroc 0.9\n"))

def eval_command(
    preds: Annotated[str, typer.Argument(
        metavar="PREDS",
        help="Predictions: Parquet file/dir/glob, Arrow, .npy, .npz, CSV, or - for stdin.")],
    labels: Annotated[str | None, typer.Argument(
        metavar="[LABELS]",
        help="Targets, if not in PREDS (rows aligned, or joined with --on).")] = None,
    logits: Annotated[str | None, typer.Option(
        "--logits", metavar="COLUMNS",
        help="Logit columns: comma list or globs ([cyan]logit_*[/]).")] = None,
    targets: TargetsOpt = None,
    on: Annotated[str | None, typer.Option(
        "--on", metavar="COLUMN", help="Join PREDS and LABELS on this key column (with "
        "--engine dask: through Dask's merge, the slower path).")] = None,
    weight: WeightOpt = None,
    pos_weight: PosWeightOpt = None,
    reduction: Annotated[Reduction, typer.Option("--reduction", help="mean (sum / elements), "
                                                 "sum, or none (with --output).")] = Reduction.MEAN,
    output: Annotated[str | None, typer.Option(
        "--output", metavar="PATH",
        help="With --reduction none: per-element losses (.parquet: one column per class, "
             "after the --on key column when joined; or .npy). With --engine dask: a new "
             "or empty directory, a Parquet dataset of one file per task.")] = None,
    label_smoothing: SmoothingOpt = 0.0,
    ignore_value: IgnoreOpt = None,
    from_probs: FromProbsOpt = False,
    nan_policy: Annotated[NanPolicy, typer.Option(
        "--nan-policy", help="NaN (and Arrow nulls): error, omit, or propagate.")
    ] = NanPolicy.ERROR,
    class_dim: ClassDimOpt = 1,
    fmt: FormatOpt = EvalFormat.TABLE,
    report: ReportOpt = None,
    html: Annotated[str | None, typer.Option(
        "--html", metavar="PATH",
        help="Also write a self-contained HTML report here (charts of the 20 classes worst "
             "against their prior; with --metrics, reliability diagrams and logit "
             "histograms).")] = None,
    max_loss: Annotated[float | None, typer.Option(
        "--max-loss", help="Gate: fail (exit 1) if the overall loss exceeds this.")] = None,
    max_class_loss: Annotated[float | None, typer.Option(
        "--max-class-loss", help="Gate: fail if any class's loss exceeds this.")] = None,
    baseline: Annotated[str | None, typer.Option(
        "--baseline", metavar="REPORT",
        help="Gate: a previous JSON report to compare with.")] = None,
    max_increase: Annotated[float | None, typer.Option(
        "--max-increase", help="With --baseline: allowed absolute increase of any loss.")
    ] = None,
    by: ByOpt = None,
    max_group_loss: Annotated[float | None, typer.Option(
        "--max-group-loss", help="With --by: fail if any group's loss exceeds this.")
    ] = None,
    confidence: ConfidenceOpt = 0.95,
    metrics: Annotated[str | None, typer.Option(
        "--metrics", metavar="LIST",
        help="Also per class and overall: brier, ece, auroc, average_precision, "
             "best_threshold (comma list), or all.")] = None,
    bins: Annotated[int, typer.Option(
        "--bins", help="Equal-width probability bins of ece and its reliability table.")] = 15,
    min_auroc: Annotated[float | None, typer.Option(
        "--min-auroc", help="Gate: fail if any class's AUROC is below this.")] = None,
    max_ece: Annotated[float | None, typer.Option(
        "--max-ece", help="Gate: fail if any class's ECE exceeds this.")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="Compute threads (default: all cores; one fewer for the "
                                 "kernels while tables are decoded ahead).")] = None,
    batch_rows: BatchRowsOpt = 65536,
    engine: EngineOpt = Engine.LOCAL,
    scheduler: SchedulerOpt = None,
    timeout: TimeoutOpt = None,
    device: Annotated[Device, typer.Option(
        "--device", help="cpu, cuda (an NVIDIA GPU; pip install 'bce-cli\\[cuda]'), or auto "
        "(the GPU when one is usable). Same report (within 1e-12).")] = Device.CPU,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", help="Progress bar on stderr (default: when a terminal).")
    ] = None,
    debug: DebugOpt = False,
):
    """Compute the loss of PREDS against LABELS, print a report, and gate on it."""
    with guard(debug):
        from .data import InputSpec
        from .evaluate import EvalOptions, evaluate
        from .report import emit

        spec = InputSpec(preds=preds, labels=labels, logits=logits, targets=targets, on=on,
                         weight=weight, class_dim=class_dim, batch_rows=batch_rows,
                         nan_policy=nan_policy.value, by=by)
        opts = EvalOptions(reduction=reduction.value, pos_weight=pos_weight,
                           label_smoothing=label_smoothing, ignore_value=ignore_value,
                           from_probs=from_probs, output=output, report=report,
                           html=html, threads=threads, engine=engine.value,
                           scheduler=scheduler,
                           timeout=timeout, confidence=confidence, device=device.value,
                           max_loss=max_loss, max_class_loss=max_class_loss, baseline=baseline,
                           max_increase=max_increase, max_group_loss=max_group_loss,
                           metrics=metrics, bins=bins, min_auroc=min_auroc, max_ece=max_ece)
        from ._safe_write import check_outputs

        check_stdout()
        check_outputs({"--output": None if engine.value == "dask" else output,  # a directory
                       "--report": report, "--html": html},
                      {"PREDS": preds, "LABELS": labels, "--weight": weight,
                       "--pos-weight": pos_weight, "--baseline": baseline})
        show = sys.stderr.isatty() if progress is None else progress
        with _progress(show) as (advance, set_total):  # writes --output, --report, --html
            result = evaluate(spec, opts, warn=warn, progress=advance, total=set_total)
        with report_on_stdout():
            emit("eval", fmt.value, result, out_console)
    if not result["passed"]:
        for f in result["failures"]:
            err_console().print(f"[bold red]gate failed:[/] {escape(f)}", soft_wrap=True)
        raise typer.Exit(EXIT_GATE)


@app.command("compare", epilog=(
    "NEW_PREDS may be left out when BASE_PREDS holds both models' logits (--logits-base, "
    "--logits-new) and the targets; with the targets in a file of their own, name the "
    "predictions file twice. Rows are paired by position.\n\n"
    "[bold]Examples[/]\n\n"
    "  bce compare sample_data/digits_preds.parquet sample_data/digits_preds_new.parquet "
    "sample_data/digits_labels.parquet --max-increase-upper 0.005\n\n"
    "  bce compare preds.parquet --logits-base 'base_*' --logits-new 'new_*' "
    "--targets 'label_*' --max-increase 0 --format json\n\n"
    "  bce compare preds.parquet preds.parquet labels.parquet --logits-base 'base_*' "
    "--logits-new 'new_*' --report compare.json\n"))
def compare_command(
    base: Annotated[str, typer.Argument(
        metavar="BASE_PREDS",
        help="The base (deployed) model's predictions: as PREDS of bce eval.")],
    new: Annotated[str | None, typer.Argument(
        metavar="[NEW_PREDS]",
        help="The new model's predictions, the same rows in the same order.")] = None,
    labels: Annotated[str | None, typer.Argument(
        metavar="[LABELS]",
        help="Targets, if not in the predictions files (rows aligned, or joined with --on)."
    )] = None,
    logits_base: Annotated[str | None, typer.Option(
        "--logits-base", metavar="COLUMNS",
        help="The base model's logit columns (or .npz array) in BASE_PREDS.")] = None,
    logits_new: Annotated[str | None, typer.Option(
        "--logits-new", metavar="COLUMNS",
        help="The new model's logit columns (or .npz array), in NEW_PREDS or BASE_PREDS.")
    ] = None,
    logits: Annotated[str | None, typer.Option(
        "--logits", metavar="COLUMNS",
        help="Logit columns of both models (when named alike in their files).")] = None,
    targets: TargetsOpt = None,
    on: Annotated[str | None, typer.Option(
        "--on", metavar="COLUMN",
        help="Join each predictions file and LABELS on this key column.")] = None,
    weight: WeightOpt = None,
    pos_weight: PosWeightOpt = None,
    reduction: Annotated[Reduction, typer.Option(
        "--reduction", help="mean (sum / elements) or sum (none has nothing to compare).")
    ] = Reduction.MEAN,
    label_smoothing: SmoothingOpt = 0.0,
    ignore_value: IgnoreOpt = None,
    from_probs: FromProbsOpt = False,
    nan_policy: Annotated[NanPolicy, typer.Option(
        "--nan-policy", help="NaN (and Arrow nulls): error, omit (from both models), or "
        "propagate.")] = NanPolicy.ERROR,
    class_dim: ClassDimOpt = 1,
    fmt: FormatOpt = EvalFormat.TABLE,
    report: ReportOpt = None,
    max_increase: Annotated[float | None, typer.Option(
        "--max-increase", metavar="X",
        help="Gate: fail (exit 1) when the whole interval of the overall or any class's "
             "delta (new - base) lies above X (the new model is surely worse by more).")
    ] = None,
    max_increase_upper: Annotated[float | None, typer.Option(
        "--max-increase-upper", metavar="X",
        help="Gate: fail when the interval's upper end exceeds X (the new model is not "
             "shown to be at most X worse).")] = None,
    by: ByOpt = None,
    confidence: ConfidenceOpt = 0.95,
    threads: Annotated[int | None, typer.Option("--threads", min=1,
                                                help="Compute threads (default: all cores).")
                       ] = None,
    batch_rows: BatchRowsOpt = 65536,
    engine: EngineOpt = Engine.LOCAL,
    scheduler: SchedulerOpt = None,
    timeout: TimeoutOpt = None,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", help="Progress bar on stderr (default: when a terminal).")
    ] = None,
    debug: DebugOpt = False,
):
    """Compare two models' losses on the same targets, row by row (paired): each loss, the
    change (new - base) with its interval and p-value, per class and overall; gate on it."""
    with guard(debug):
        from ._safe_write import check_outputs
        from .compare import CompareOptions, compare, compare_specs
        from .report import emit

        spec_base, spec_new = compare_specs(
            base, new, labels, logits_base=logits_base, logits_new=logits_new, logits=logits,
            targets=targets, on=on, weight=weight, class_dim=class_dim, batch_rows=batch_rows,
            nan_policy=nan_policy.value, by=by)
        opts = CompareOptions(reduction=reduction.value, pos_weight=pos_weight,
                              label_smoothing=label_smoothing, ignore_value=ignore_value,
                              from_probs=from_probs, report=report, threads=threads,
                              engine=engine.value, scheduler=scheduler, timeout=timeout,
                              confidence=confidence,
                              max_increase=max_increase, max_increase_upper=max_increase_upper)
        check_stdout()
        check_outputs({"--report": report},
                      {"BASE_PREDS": base, "NEW_PREDS": new, "LABELS": labels,
                       "--weight": weight, "--pos-weight": pos_weight})
        show = sys.stderr.isatty() if progress is None else progress
        with _progress(show) as (advance, set_total):  # also writes --report
            result = compare(spec_base, spec_new, opts, warn=warn, progress=advance,
                             total=set_total)
        with report_on_stdout():
            emit("compare", fmt.value, result, out_console)
    if not result["passed"]:
        for f in result["failures"]:
            err_console().print(f"[bold red]gate failed:[/] {escape(f)}", soft_wrap=True)
        raise typer.Exit(EXIT_GATE)


def _progress(show: bool):
    @contextmanager
    def bar():
        if not show:
            yield (None, None)
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("reading"), BarColumn(), TextColumn("{task.completed} rows"),
                      TimeRemainingColumn(), console=err_console(), transient=True,
                      redirect_stdout=False, redirect_stderr=False) as p:
            task = p.add_task("rows", total=None)
            yield (lambda n: p.advance(task, n), lambda t: p.update(task, total=t))

    return bar()


@app.command("suggest-pos-weight", epilog="""[bold]Examples[/]

  bce suggest-pos-weight labels.parquet --output pos_weight.json

  bce suggest-pos-weight labels.npy --method sqrt --clip-max 50 --format csv
""")
def suggest_pos_weight_command(
    labels: Annotated[str, typer.Argument(
        metavar="LABELS", help="Targets: Parquet, Arrow, .npy, .npz, CSV, or -.")],
    targets: TargetsOpt = None,
    method: Annotated[Method, typer.Option(
        "--method", help="ratio = n_neg/n_pos; sqrt of it; effective-number (with --beta).")
    ] = Method.RATIO,
    beta: Annotated[float, typer.Option("--beta", help="For effective-number, in (0, 1).")
                    ] = 0.999,
    clip_max: Annotated[float | None, typer.Option("--clip-max", help="Upper bound on weights.")
                        ] = None,
    fmt: Annotated[PosWeightFormat, typer.Option("--format", help="Output format on stdout.")
                   ] = PosWeightFormat.TABLE,
    output: Annotated[str | None, typer.Option("--output", metavar="PATH",
                                                      help="Write the JSON here.")] = None,
    class_dim: ClassDimOpt = 1,
    batch_rows: BatchRowsOpt = 65536,
    engine: EngineOpt = Engine.LOCAL,
    scheduler: SchedulerOpt = None,
    timeout: TimeoutOpt = None,
    debug: DebugOpt = False,
):
    """Suggest a per-class pos_weight (n_neg / n_pos) from the targets' class counts."""
    with guard(debug):
        from ._safe_write import check_outputs
        from .evaluate import suggest
        from .report import emit, to_json

        check_stdout()
        check_outputs({"--output": output}, {"LABELS": labels})
        result = suggest(labels, targets=targets, method=method.value, beta=beta,
                         clip_max=clip_max, batch_rows=batch_rows, class_dim=class_dim,
                         warn=warn, engine=engine.value, scheduler=scheduler,
                         timeout=timeout)
        if output:
            from ._safe_write import write_bytes

            write_bytes(output, (to_json(result) + "\n").encode())
        with report_on_stdout():
            emit("pos_weight", fmt.value, result, out_console)


@app.command("warmup", help=(
    "Compile every kernel form into the cache, so that large inputs can take the compiled "
    "kernels without waiting for a compiler (a Docker image layer, a CI cache step). Small "
    "and mid-size inputs never need it, nor, on x86-64 Linux with AVX2 or later, does bce "
    "installed from a release wheel, which carries the forms compiled."),
    epilog="""[bold]Examples[/]

  bce warmup                                   # into the package's __pycache__

  NUMBA_CACHE_DIR=/opt/bce-cache bce warmup    # a directory a CI cache step keeps
""")
def warmup_command(debug: DebugOpt = False):
    with guard(debug):
        import time

        from . import _launch, _prebuilt

        err = err_console()
        start = time.perf_counter()
        times = {}

        def report(form, seconds):
            times[form.name] = seconds
            err.print(f"  {form.name:<24} {seconds:5.2f} s")

        forms = _launch.warmup(report)
        slowest = max(times, key=times.get)
        shipped = _prebuilt.directory()
        where = sorted({_launch.cache_dir(f) or "nowhere (no writable cache directory: set "
                        "NUMBA_CACHE_DIR)" for f in forms})
        where = [f"{path} (compiled ahead, installed with bce)" if path == shipped else path
                 for path in where]
        typer.echo(f"bce warmup: {len(forms)} kernel forms ready in "
                   f"{time.perf_counter() - start:.1f} s (slowest {slowest}, "
                   f"{times[slowest]:.2f} s), cached in {', '.join(where)}")


def main() -> None:
    from . import _tiers

    _tiers.own_process = True
    click_error = click_error_class()
    try:
        code = app(prog_name="bce", standalone_mode=False)
    except click_error as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `bce`: the help, exit 2
            err.show()
        else:
            usage_error(err)
        sys.exit(err.exit_code)
    except typer.Abort:
        sys.stderr.write("bce: aborted\n")
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _watched() -> bool:
    """Whether a profiler, tracer or coverage tool watches this process (they write what
    they saw at exit)."""
    if sys.gettrace() is not None or sys.getprofile() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12+
    return monitoring is not None and any(monitoring.get_tool(i) for i in range(6))


def command() -> None:
    """The ``bce`` command: :func:`main`, then the process ends as soon as its output is
    flushed.  Python's own teardown (freeing every module's objects) costs a small
    job 20-25 ms, a sixth of its time, and does nothing a finished command needs:
    every file bce writes is closed and renamed in place by then.  A process that
    imported Dask runs the exit handlers first (Dask's close any client or cluster
    still open and end its processes), then skips the teardown, which took a Dask
    job's driver about 0.1 s on 2 cores.  A process that a profiler or coverage tool watches keeps
    Python's exit (``python -m cProfile -m bce_cli ...``)."""
    try:
        main()
    except SystemExit as done:
        code = done.code
    else:
        code = EXIT_OK
    if not isinstance(code, int | None) or _watched():
        sys.exit(code)
    if "distributed" in sys.modules:
        import atexit

        run_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython's, not documented
        if run_handlers is None:
            sys.exit(code)
        run_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # its reader went away: what is left is dropped
            to_devnull(stream)
        except (OSError, ValueError, AttributeError):  # closed (or none): Python's exit
            sys.exit(code)
    os._exit(code or EXIT_OK)
