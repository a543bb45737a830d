"""The one exception family of the library: messages are written for people."""

from __future__ import annotations

import copy


def printable(text, limit: int | None = 300) -> str:
    """``text`` safe to print: control and other non-printable characters (and the
    U+FFFD that stands for undecodable bytes) escaped as ``\\xNN`` / ``\\uNNNN``,
    and cut to ``limit`` characters; so binary garbage quoted by a parser never
    reaches the terminal.

    >>> printable("bad\\x00\\x1b[31m row")
    'bad\\\\x00\\\\x1b[31m row'
    >>> printable("x" * 10, limit=4)
    'xxxx...'
    """
    text = str(text)
    if not text.isprintable() or "\ufffd" in text:
        text = "".join(
            c if c.isprintable() and c != "\ufffd" else c.encode("unicode_escape").decode("ascii")
            for c in text
        )
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return text


def brief(items, limit: int = 5) -> str:
    """Names for a message: the first ``limit``, then "...".  A dict gives
    ``key: values`` items.

    >>> brief(["a", "b", "c"], limit=2)
    'a, b, ...'
    """
    if isinstance(items, dict):
        items = [f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                 for k, v in items.items()]
    items = [str(i) for i in items]
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


class BCEInputError(ValueError):
    """Bad input: what is wrong and where (file, column, row), in one or two lines.

    ``file``, ``column`` and ``row`` are kept as attributes so that a caller
    that knows more context (the CLI knows the file name, the data layer knows
    the column) can add it with :meth:`with_context` without parsing text.
    ``role`` says which input the error is about, when it is about one:
    "logits", "targets" or "weight"; ``element`` the element's index inside the
    file's row (N-D arrays).  The message is built from these fields.
    """

    def __init__(self, message: str, *, file=None, column=None, row=None, hint=None,
                 role=None, element=None):
        self.reason = message
        self.file = None if file is None else str(file)
        self.column = column
        self.row = row
        self.hint = hint
        self.role = role
        self.element = element
        super().__init__(self._render())

    def _reason(self) -> str:
        """What is wrong, with the position inside the row when there is one."""
        if self.element is None:
            return self.reason
        return f"{self.reason} at element {list(self.element)} of the row"

    def _render(self) -> str:
        where = []
        if self.file is not None:
            where.append(printable(self.file, None))
        if self.column is not None:
            where.append(f"column {printable(repr(self.column), 200)}")
        if self.row is not None:
            where.append(f"row {self.row}")
        reason = printable(self._reason(), None)
        text = f"{', '.join(where)}: {reason}" if where else reason
        if self.hint:
            text += f"\n  hint: {printable(self.hint, None)}"
        return text

    def with_context(self, *, file=None, column=None, row=None, hint=None,
                     element=None) -> BCEInputError:
        """Return a copy with the missing context filled in (existing context wins)."""
        new = copy.copy(self)
        if new.file is None and file is not None:
            new.file = str(file)
        if new.column is None:
            new.column = column
        if new.row is None:
            new.row = row
        if new.element is None:
            new.element = element
        new.hint = new.hint or hint
        new.args = (new._render(),)
        return new


class InvalidValueError(BCEInputError):
    """A NaN, or a target outside [0, 1], found in the data.

    ``what`` says what is wrong ("target is NaN"), ``role`` in which input
    ("logits" or "targets"), ``index`` is the element's index in the array that
    was passed in and ``class_index`` its position along the class axis.  Until
    a row is known the message states the index; a caller that streams batches
    places the error with :meth:`with_context` (file, column, row in the file,
    element in the row), and the message then states that position instead,
    never a batch index.

    >>> err = InvalidValueError("logit is NaN", role="logits", index=(2, 1), class_index=1)
    >>> str(err), err.role
    ('logit is NaN at index (2, 1)', 'logits')
    >>> str(err.with_context(file="x.npy", row=7))
    'x.npy, row 7: logit is NaN'
    """

    def __init__(self, what: str, *, role: str = "targets", index=None, class_index=None,
                 **context):
        self.what = what
        self.index = index
        self.class_index = class_index
        super().__init__(what, role=role, **context)

    def _reason(self) -> str:
        if self.row is not None or self.index is None:
            return super()._reason()
        at = self.index[0] if len(self.index) == 1 else self.index
        return f"{self.what} at index {at}"
