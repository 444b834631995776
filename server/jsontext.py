"""Strict JSON text, as request bodies and import files are read: one parser for both.

Beyond the standard library's parser it refuses NaN and the infinities (not JSON), numbers too large for a
float, strings that are not valid Unicode (lone surrogates from ``\\ud800``-style escapes), and structures
nested deeper than the caller allows, whatever the depth (the check is iterative, and the parser's own
recursion limit counts as too deep).
"""

from __future__ import annotations

import json
import math
from typing import Any


class TooDeep(ValueError):
    """The text nests objects and arrays deeper than allowed."""


def loads_strict(text: str, max_depth: int) -> Any:
    """The value ``text`` holds; ValueError (TooDeep for nesting) when it is not strict JSON."""
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:  # the parser's own limit, about 1000 levels
        raise TooDeep(f"nested more than {max_depth} levels deep") from None
    if nested_deeper_than(value, max_depth):
        raise TooDeep(f"nested more than {max_depth} levels deep")
    _check_text(value)
    return value


def nested_deeper_than(value: object, limit: int) -> bool:
    """Whether objects and arrays in ``value`` nest more than ``limit`` levels (``value`` itself is level 1).

    Iterative, so no depth can exhaust the stack, and it stops at the first level too deep.
    """
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _check_text(value: object) -> None:
    """Refuse strings that are not valid Unicode: encoding one raises UnicodeEncodeError (a ValueError)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            item.encode("utf-8")
        elif isinstance(item, dict):
            for key, child in item.items():
                key.encode("utf-8")
                pending.append(child)
        elif isinstance(item, list):
            pending.extend(item)
