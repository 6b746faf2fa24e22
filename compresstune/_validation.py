"""One vocabulary for bad input (modelled on scikit-learn's ``_param_validation``).

Every check raises the caller's own :class:`~compresstune.errors.CompressTuneError`
subclass with one message format::

    `<field>` must be <allowed>; got <value>.

so a user reads the field, what is allowed and what they passed, whichever layer
(plan, space, training, config) caught it.

Example:
    >>> from compresstune.errors import PlanError
    >>> check_number("sparsity", 1.5, "a number in [0, 1)", lambda v: 0 <= v < 1, PlanError)
    Traceback (most recent call last):
    ...
    compresstune.errors.PlanError: `sparsity` must be a number in [0, 1); got 1.5.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from compresstune.errors import CompressTuneError

__all__ = ["check_int", "check_number", "check_one_of", "invalid", "message"]


def message(field: str, allowed: str, value: Any) -> str:
    """The one message format: "`field` must be allowed; got value."."""
    return f"`{field}` must be {allowed}; got {value!r}."


def invalid(field: str, allowed: str, value: Any, error: type[CompressTuneError] = CompressTuneError):
    """The error to raise for ``value`` of ``field`` (``raise invalid(...)``)."""
    return error(message(field, allowed, value))


def _is_real(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_number(
    field: str,
    value: Any,
    allowed: str,
    ok: Callable[[float], bool] = lambda v: True,
    error: type[CompressTuneError] = CompressTuneError,
) -> None:
    """Raise ``error`` unless ``value`` is a finite real number (not a bool) with ``ok(value)``."""
    if not _is_real(value) or not ok(value):
        raise invalid(field, allowed, value, error)


def check_int(
    field: str,
    value: Any,
    low: int | None = None,
    error: type[CompressTuneError] = CompressTuneError,
) -> None:
    """Raise ``error`` unless ``value`` is an int (not a bool), at least ``low`` when given."""
    allowed = "an integer" if low is None else f"an integer >= {low}"
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        raise invalid(field, allowed, value, error)


def check_one_of(
    field: str,
    value: Any,
    choices: tuple | list,
    error: type[CompressTuneError] = CompressTuneError,
) -> None:
    """Raise ``error`` unless ``value`` is one of ``choices`` (bools never match ints)."""
    ok = any(value == c and type(value) is type(c) for c in choices)
    if not ok:
        raise invalid(field, f"one of {list(choices)}", value, error)
