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


class Reduction(str, Enum):
    """Element losses to one number: mean (sum / elements, as PyTorch), sum, or none
    (per element, written with ``--output``; the report then shows means)."""

    MEAN = "mean"
    SUM = "sum"
    NONE = "none"


class NanPolicy(str, Enum):
    """A NaN (or an Arrow null): an input error, an element left out, or a NaN loss."""

    ERROR = "error"
    OMIT = "omit"
    PROPAGATE = "propagate"


class Method(str, Enum):
    """How ``suggest-pos-weight`` turns class counts into a pos_weight."""

    RATIO = "ratio"
    SQRT = "sqrt"
    EFFECTIVE_NUMBER = "effective-number"


class EvalFormat(str, Enum):
    """``bce eval``'s report on stdout."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"
    MARKDOWN = "markdown"


class PosWeightFormat(str, Enum):
    """``bce suggest-pos-weight``'s output on stdout."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"


class Engine(str, Enum):
    """Where the batches are computed: this process, or the workers of a Dask cluster
    (bit-identical reports)."""

    LOCAL = "local"
    DASK = "dask"


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
