"""Ray node-label selectors, the grammar alone: `{label: value}` with Ray's value forms `v` (the label
equals v), `!v` (absent or not v), `in(a,b)` (one of them), `!in(a,b)` (absent or none of them); a node
matches when every entry does. Imports nothing of raymh: the config validates selectors with it, and
placement by domain (`raymh.run.placement`) matches nodes with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_NAME = r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"
_KEY = re.compile(rf"^({_NAME}(\.{_NAME})*/)?{_NAME}$")
_VALUE = re.compile(rf"^(?P<neg>!)?(?:(?P<op>in)\((?P<set>{_NAME}(?:, ?{_NAME})*)\)|(?P<one>{_NAME}))$")


def check_selector(selector: Mapping[str, str]) -> None:
    """Raise ValueError naming the bad key or value of a node-label selector."""
    for key, value in selector.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError(f"placement label {key!r} is not a node label key (e.g. raymh.io/site)")
        if not isinstance(value, str) or not _VALUE.match(value):
            raise ValueError(
                f"placement {key}: {value!r} is not a label selector value; use v, !v, in(a,b) or !in(a,b) "
                "(letters, digits, '-', '_', '.')"
            )


def _condition(value: str) -> tuple[bool, frozenset[str]]:
    m = _VALUE.match(value)
    if m is None:
        raise ValueError(f"{value!r} is not a label selector value")
    values = m["one"] if m["one"] is not None else m["set"]
    return bool(m["neg"]), frozenset(v.strip() for v in values.split(","))


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a node with these labels satisfies every entry of the selector (Ray's semantics)."""
    for key, value in selector.items():
        negate, values = _condition(value)
        if (labels.get(key) in values) == negate:
            return False
    return True
