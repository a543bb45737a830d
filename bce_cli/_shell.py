"""How a command meets the shell: consoles for stdout and stderr, exit statuses, and
signals turned into the same cleanup as Ctrl-C.

Rich is imported only when a console is made, so a run that prints nothing for
people (``--format json``) never imports it.
"""

from __future__ import annotations

from contextlib import contextmanager

import typer

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as shells report it

def err_console():
    """A console for people (warnings, progress, errors), made when there is something
    to say: a run that says nothing on stderr (``--format json``) never imports rich."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    """One warning on stderr, never hard-wrapped (a log keeps it on one line to grep); the
    message is plain text: names in it are not read as markup."""
    err_console().print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def out_console():
    """The console of a table on stdout.  A reader that went away (``| head``) raises
    BrokenPipeError, as a plain write does (Rich would exit 1: "a gate failed")."""
    from rich.console import Console

    class _Stdout(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return _Stdout(highlight=False)


def check_stdout() -> None:
    """Before any work: a closed standard output (``>&-``) has nowhere to take the report."""
    import sys

    if sys.stdout is None:
        from .errors import BCEInputError

        raise BCEInputError("standard output is closed: the report has nowhere to go",
                            hint="redirect it instead (> report.txt, or > /dev/null)")


@contextmanager
def report_on_stdout():
    """Printing the report: when the reader goes away (``bce eval ... | head``) the rest
    is dropped quietly and the exit status stays the gates' (0 or 1), as a report
    nobody reads changes nothing; stdout is pointed at /dev/null so that Python's
    final flush does not complain."""
    import sys

    try:
        yield
    except BrokenPipeError:
        to_devnull(sys.stdout)


def to_devnull(stream) -> None:
    """Point ``stream``'s file descriptor at /dev/null (its reader went away): what is
    left to write is dropped without a complaint."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


def fail(message: str, code: int) -> typer.Exit:
    err_console().print(f"[bold red]bce: error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


class _Terminated(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread like Ctrl-C's KeyboardInterrupt, so that
    the same cleanup runs (``finally`` blocks, removing temporary files).  A BaseException,
    so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _signals_as_exceptions():
    """While a command runs, turn SIGTERM (what CI cancellation and ``docker stop`` send) and
    SIGHUP into :class:`_Terminated`; restore the previous handlers afterwards.

    Only signals still at their default action are taken over: under ``nohup`` SIGHUP
    stays ignored.  Installed by the command line only, never by the library, and only
    from the main thread (where Python runs signal handlers).  A second signal during
    the cleanup is ignored rather than interrupting it (SIGKILL remains, and the next
    writer removes what it leaves: :func:`bce_cli._safe_write.remove_stale`).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise _Terminated(signum)

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) is signal.SIG_DFL:
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def guard(debug: bool):
    """Map exceptions to exit codes: input errors 2, bugs 3 (Typer would give 1 = failed gate);
    SIGTERM and SIGHUP 128 + the signal's number, as Typer gives 130 for Ctrl-C (SIGINT),
    quietly, after the same cleanup."""

    @contextmanager
    def guarded():
        try:
            with _signals_as_exceptions():
                yield
        except typer.Exit:
            raise
        except _Terminated as stop:
            raise typer.Exit(128 + stop.signum) from None
        except Exception as err:  # noqa: BLE001 - the one place that turns errors into codes
            from .errors import BCEInputError

            if debug:
                import traceback

                traceback.print_exc()
            if isinstance(err, BCEInputError):
                raise fail(escape(str(err)), EXIT_INPUT) from None
            if isinstance(err, OSError):  # the environment (disk full, permissions), not a bug
                where = f"{err.filename}: " if err.filename else ""
                raise fail(escape(f"{where}{err.strerror or err}"), EXIT_INPUT) from None
            raise fail(f"internal error: {type(err).__name__}: {escape(str(err))}\n"
                        "  this is a bug; run again with --debug for the traceback",
                        EXIT_INTERNAL) from None

    return guarded()


def escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def usage_error(err) -> None:
    """A usage error in two lines, like every other error (not Typer's framed box)."""
    ctx = getattr(err, "ctx", None)
    where = ctx.command_path if ctx is not None else "bce"
    message = err.format_message().replace("Value error, ", "")
    err_console().print(f"[bold red]{escape(where)}: error:[/] {escape(message)}", soft_wrap=True)
    if ctx is not None:
        err_console().print(f"Try '{escape(where)} -h' for help.", soft_wrap=True)


def click_error_class():
    """Click's ClickException as Typer raises it (Typer vendors Click in recent versions;
    its public BadParameter derives from UsageError, which derives from ClickException)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
