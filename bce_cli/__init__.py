"""bce: exact, fast sigmoid binary cross-entropy with logits over files.

The names below are loaded on first use, so that ``bce --help`` does not pay
for numba.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "bce_with_logits": "functional",
    "bce_with_logits_grad": "functional",
    "BCEWithLogitsLoss": "functional",
    "suggest_pos_weight": "functional",
    "pos_weight_from_counts": "functional",
    "BCEAccumulator": "accumulator",
    "BCEResult": "accumulator",
    "BCEInputError": "errors",
    "InvalidValueError": "errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
