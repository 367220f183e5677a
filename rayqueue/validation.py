"""Checks of single arguments (counts, seconds) through pydantic, one rule each.

The public API takes plain Python numbers in many places (``receive(max_messages)``,
``consumer(flush_interval_s)``, ``read_dataset(max_messages)``, the CLI's flags). Each
is checked here by a strict pydantic ``TypeAdapter``, so that ``True``, ``"1"``,
``1.5`` for a count, NaN, infinity and ``10**400`` are refused in one place, the same
way, with one error type. Nothing here imports Ray or pyarrow: the CLI checks its
flags before it loads either.
"""

from __future__ import annotations

import functools
from typing import Annotated, Generic, TypeVar

import pydantic
from pydantic import Field, TypeAdapter

from rayqueue.errors import InvalidArgument, shown

T = TypeVar("T", int, float)


class Rule(Generic[T]):
    """What one argument must be: a strict pydantic type with bounds, and those
    bounds in words for the error (``"an int from 1 to 10,000"``)."""

    def __init__(self, adapter: TypeAdapter[T], wants: str) -> None:
        self._adapter: TypeAdapter[T] = adapter
        self.wants = wants

    def check(self, name: str, value: object) -> T:
        """``value`` as the rule's type; raise InvalidArgument naming ``name`` and
        quoting the value (cut short) if it breaks the rule."""
        try:
            return self._adapter.validate_python(value, strict=True)
        except pydantic.ValidationError:
            # The rule's own words say more than pydantic's first complaint (which
            # names one bound only), and stay one line for any value.
            raise InvalidArgument(f"{name} ({_quoted(value)}) must be {self.wants}") from None


def _quoted(value: object) -> str:
    try:
        return shown(repr(value))
    except ValueError:  # an int of more than 4,300 digits has no repr
        return f"an {type(value).__name__} too long to print"


# Rules are built once per set of bounds: a TypeAdapter takes far longer to build
# than to run, and receive() checks its arguments on every call.


@functools.cache
def count(low: int, high: int) -> Rule[int]:
    """An int (not a bool, a float or a numpy int) from ``low`` to ``high``."""
    return Rule(TypeAdapter(Annotated[int, Field(ge=low, le=high)]), f"an int from {low:,} to {high:,}")


@functools.cache
def number(low: float, high: float) -> Rule[float]:
    """A finite int or float from ``low`` to ``high`` (not a bool or a str)."""
    adapter = TypeAdapter(Annotated[float, Field(ge=low, le=high, allow_inf_nan=False)])
    return Rule(adapter, f"a number from {low:g} to {high:g}")


@functools.cache
def more_than(low: float, high: float) -> Rule[float]:
    """A finite number above ``low``, up to ``high``."""
    adapter = TypeAdapter(Annotated[float, Field(gt=low, le=high, allow_inf_nan=False)])
    return Rule(adapter, f"a number above {low:g} and at most {high:g}")


def check(name: str, value: object, rule: Rule[T]) -> T:
    """``rule.check(name, value)``: reads as a sentence at the call site."""
    return rule.check(name, value)
