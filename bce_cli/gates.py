"""The gates of ``bce eval``: --max-loss, --max-class-loss, and --baseline with
--max-increase (the baseline report read and checked here).

The functions take the evaluation's options (``EvalOptions``: ``max_loss``,
``max_class_loss``, ``baseline``, ``max_increase``, ``max_group_loss``) and the report as
:func:`bce_cli.evaluate.evaluate` builds it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from .choices import Reduction, values
from .errors import BCEInputError, brief, printable
from .report import loss_number

if TYPE_CHECKING:
    from .evaluate import EvalOptions

# The limits of the gates, with the flags that set them.
LIMITS = (("max_loss", "--max-loss"), ("max_class_loss", "--max-class-loss"),
          ("max_increase", "--max-increase"), ("max_group_loss", "--max-group-loss"),
          ("min_auroc", "--min-auroc"), ("max_ece", "--max-ece"))


def check_limits(opts, limits=LIMITS) -> None:
    """A gate's limit must be a number: NaN would pass every loss.  ``limits``: the
    (option, flag) pairs to check (``bce compare`` has its own)."""
    for name, flag in limits:
        limit = getattr(opts, name)
        if limit is not None and math.isnan(limit):
            raise BCEInputError(f"{flag} is NaN: a gate needs a number (NaN would pass every "
                                "loss)")


def baseline_for(opts: EvalOptions) -> dict | None:
    """The baseline report of ``--baseline`` (checked), None without one."""
    baseline = load_baseline(opts.baseline) if opts.baseline else None
    if (opts.baseline is None) != (opts.max_increase is None):
        raise BCEInputError("--baseline and --max-increase go together")
    return baseline


def apply_gates(report: dict, opts: EvalOptions, baseline: dict | None,
                warn: Callable[[str], None]) -> None:
    """Check the gates and put the outcome into ``report``: "gates" (the limits
    that were set), "passed" and "failures" (one readable line each)."""
    if baseline is not None:
        new = check_baseline_matches(report, baseline, opts.baseline)
        if new:
            warn(f"{len(new)} class(es) are not in the baseline and are not compared: "
                 f"{brief(new)}")
    failures = check_gates(report, opts, baseline)
    report["gates"] = {k: v for k, v in (("max_loss", opts.max_loss),
                                          ("max_class_loss", opts.max_class_loss),
                                          ("baseline", opts.baseline),
                                          ("max_increase", opts.max_increase),
                                          ("max_group_loss", opts.max_group_loss),
                                          ("min_auroc", opts.min_auroc),
                                          ("max_ece", opts.max_ece))
                       if v is not None}
    report["passed"] = not failures
    report["failures"] = failures


def load_baseline(path: str) -> dict:
    """The baseline report, checked: ``loss`` a number (or null, or an infinity
    spelled as a string such as "Infinity"), ``reduction`` one of the reductions,
    ``classes`` a list of objects with a ``name`` and a ``loss``.  Losses come back
    as floats (or None)."""
    from .data._paths import read_json

    base = read_json(path, missing="baseline report not found",
                     unreadable="not a readable JSON report")
    if not isinstance(base, dict) or "loss" not in base:
        raise BCEInputError("not a bce JSON report (no 'loss' key)", file=path,
                            hint="write one with: bce eval ... --report PATH")
    base = dict(base)
    base["loss"] = _checked_loss(base["loss"], path, "the baseline's 'loss'")
    if base["loss"] is not None and math.isnan(base["loss"]):  # json.load reads NaN literally
        raise BCEInputError("the baseline's loss is NaN: nothing can be compared with it",
                            file=path)
    red = base.get("reduction", "mean")
    if red not in values(Reduction):
        raise BCEInputError(f"the baseline's 'reduction' is {_shown(red)}, not 'mean', 'sum' "
                            "or 'none'", file=path)
    classes = base.get("classes", [])
    if not isinstance(classes, list):
        raise BCEInputError(f"the baseline's 'classes' is {_shown(classes)}, not a list",
                            file=path)
    checked = []
    for i, c in enumerate(classes):
        if not isinstance(c, dict) or not isinstance(c.get("name"), (str, int)) \
                or isinstance(c.get("name"), bool):
            raise BCEInputError(f"the baseline's class {i} is {_shown(c)}, not an object with "
                                "a 'name'", file=path)
        name = str(c["name"])
        checked.append({**c, "name": name,
                        "loss": _checked_loss(c.get("loss"), path,
                                              f"the baseline's loss of class {name!r}")})
    base["classes"] = checked
    return base


def _shown(value) -> str:
    return printable(json.dumps(value, allow_nan=True), 60)


def _checked_loss(value, path, what) -> float | None:
    """A loss read from a baseline file: a number, null, or an infinity spelled as a
    string (how reports write one); anything else is an input error."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = 0.0
        if math.isinf(number):
            return number
    raise BCEInputError(f"{what} is {_shown(value)}, not a number", file=path)


def check_baseline_matches(report: dict, baseline: dict, path: str) -> list[str]:
    """A baseline must be comparable: same reduction, and classes that match by name.

    Returns the names of this run's classes that the baseline lacks."""
    red = baseline.get("reduction", "mean")
    if (red == "sum") != (report["reduction"] == "sum"):
        raise BCEInputError(f"the baseline's losses are {red!r} reductions but this run's are "
                            f"{report['reduction']!r}: they cannot be compared", file=path)
    names = [c["name"] for c in report["classes"]]
    base_names = [c["name"] for c in baseline["classes"]]
    if base_names and not set(names) & set(base_names):
        raise BCEInputError(f"no class of this run ({brief(names)}) is in the baseline "
                            f"({brief(base_names)})", file=path,
                            hint="make the baseline from the same kind of input")
    known = set(base_names)
    return [n for n in names if n not in known]


def _exceeds(value, limit) -> bool:
    return value is None or value > limit


def _rise(new, base):
    """How much a loss rose over the baseline's (None: NaN); an infinite loss that
    stays infinite did not rise."""
    if new is None:
        return None
    return 0.0 if new == base else new - base


def _compared(v: float | None) -> float | None:
    """A baseline loss as :func:`load_baseline` left it (a float or None), None for NaN:
    a class whose baseline loss is not a number is not compared."""
    return None if v is None or v != v else v


def check_gates(report: dict, opts: EvalOptions, baseline: dict | None) -> list[str]:
    """The failed gates, one readable line each (empty: passed)."""
    failures = []
    loss = loss_number(report["loss"])
    if opts.max_loss is not None and _exceeds(loss, opts.max_loss):
        failures.append(f"overall loss {fmt_loss(loss)} > --max-loss {opts.max_loss:g}")
    if opts.max_class_loss is not None:
        for c in report["classes"]:
            if _exceeds(loss_number(c["loss"]), opts.max_class_loss):
                failures.append(f"class {c['name']}: loss {fmt_loss(c['loss'])} > "
                                f"--max-class-loss {opts.max_class_loss:g}")
    if opts.max_group_loss is not None:
        for g in report.get("groups", []):
            if _exceeds(loss_number(g["loss"]), opts.max_group_loss):
                failures.append(f"group {_key(g['key'])}: loss {fmt_loss(g['loss'])} > "
                                f"--max-group-loss {opts.max_group_loss:g}")
    if baseline is not None:
        limit = opts.max_increase
        base_loss = _compared(baseline["loss"])
        if base_loss is not None and _exceeds(_rise(loss, base_loss), limit):
            failures.append(f"overall loss {fmt_loss(loss)} rose by more than {limit:g} over the "
                            f"baseline's {fmt_loss(base_loss)}")
        base_classes = {c["name"]: c["loss"] for c in baseline["classes"]}
        for c in report["classes"]:
            b = _compared(base_classes.get(c["name"]))
            if b is None:
                continue
            if _exceeds(_rise(loss_number(c["loss"]), b), limit):
                failures.append(f"class {c['name']}: loss {fmt_loss(c['loss'])} rose by more than "
                                f"{limit:g} over the baseline's {fmt_loss(b)}")
    failures += _metric_gates(report, opts)
    return failures


def _metric_gates(report: dict, opts: EvalOptions) -> list[str]:
    """--min-auroc / --max-ece: any class below / above the limit fails; so does a class
    whose metric is undefined (null: one kind of target only, or a NaN element), as a
    NaN loss fails --max-class-loss."""
    failures = []
    for key, limit, flag, sign in (("auroc", opts.min_auroc, "--min-auroc", -1),
                                   ("ece", opts.max_ece, "--max-ece", 1)):
        if limit is None:
            continue
        for c in report["classes"]:
            v = c.get(key)
            if v is None:
                failures.append(f"class {c['name']}: {key} undefined (one kind of target "
                                f"only, or a NaN) fails {flag} {limit:g}")
            elif sign * (v - limit) > 0:
                failures.append(f"class {c['name']}: {key} {v:.6g} {'<' if sign < 0 else '>'} "
                                f"{flag} {limit:g}")
    return failures


def _key(key) -> str:
    """A group's key in a message: JSON's spelling (strings quoted, null)."""
    return printable(json.dumps(key), 80)


def fmt_loss(v) -> str:
    """A loss of a report in a gate's message: NaN for null, else 6 digits."""
    v = loss_number(v)
    return "NaN" if v is None else f"{v:.6g}"
