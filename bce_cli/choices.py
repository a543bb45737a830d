"""Every set of named choices, spelled once: the CLI's options (Typer reads these
enums), the data layer's spec, the accumulator and the API check against them.

The members are ``str``: ``Reduction.MEAN == "mean"``, so callers may pass plain
strings.  :func:`check` takes either and returns the plain string value (an Enum
member hashes by its name, so a member must not be used as a key of a dict keyed
by values), or says what is allowed.
"""

from __future__ import annotations

from enum import Enum

from .errors import BCEInputError


def _choices(name: str, doc: str, *choices: str) -> type[Enum]:
    """A ``str`` Enum whose members are the upper-cased choices (``-`` as ``_``)."""
    enum = Enum(name, [(c.upper().replace("-", "_"), c) for c in choices], type=str,
                module=__name__, qualname=name)
    enum.__doc__ = doc
    return enum


Reduction = _choices(
    "Reduction", "Element losses to one number: mean (sum / elements, as PyTorch), sum, or "
    "none (per element, written with --output; the report then shows means).",
    "mean", "sum", "none")
NanPolicy = _choices(
    "NanPolicy", "A NaN (or an Arrow null): an input error, an element left out, or a NaN loss.",
    "error", "omit", "propagate")
Method = _choices(
    "Method", "How suggest-pos-weight turns class counts into a pos_weight.",
    "ratio", "sqrt", "effective-number")
EvalFormat = _choices("EvalFormat", "bce eval's report on stdout.",
                      "table", "json", "csv", "markdown")
PosWeightFormat = _choices("PosWeightFormat", "bce suggest-pos-weight's output on stdout.",
                           "table", "json", "csv")
Engine = _choices(
    "Engine", "Where the batches are computed: this process, or the workers of a Dask "
    "cluster (bit-identical reports).", "local", "dask")
Device = _choices(
    "Device", "Where the losses are computed: the CPU, an NVIDIA GPU (the [cuda] extra), or "
    "the GPU when one is usable, else the CPU.", "cpu", "cuda", "auto")


def values(enum: type[Enum]) -> tuple[str, ...]:
    """The allowed strings, in order.

    >>> values(Reduction)
    ('mean', 'sum', 'none')
    """
    return tuple(m.value for m in enum)


def check(enum: type[Enum], value, name: str) -> str:
    """The value of the member of ``enum`` that ``value`` (a member or its string) names.

    >>> check(Reduction, Reduction.SUM, "reduction"), check(Method, "sqrt", "method")
    ('sum', 'sqrt')
    >>> check(NanPolicy, "skip", "nan_policy")
    Traceback (most recent call last):
    ...
    bce_cli.errors.BCEInputError: nan_policy must be one of error, omit, propagate; got 'skip'
    """
    try:
        return enum(value).value
    except ValueError:
        raise BCEInputError(f"{name} must be one of {', '.join(values(enum))}; "
                            f"got {value!r}") from None
