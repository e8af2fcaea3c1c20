"""The attrs validators of gfnlm's configuration and component options, one set for all.

Each raises :class:`~gfnlm.contracts.errors.ConfigError` (a ``ValueError``, which
:func:`~gfnlm.contracts.registry.build` prefixes with the component's kind and name) in one line
naming the field, the value and what is allowed. A run-config field is named with its section
(``train.lr``), a component option by its own name (``ratio``).
"""

import math
from collections.abc import Callable
from typing import Any

import attrs

from gfnlm.contracts.errors import ConfigError, quoted

Validator = Callable[[Any, attrs.Attribute, Any], None]

# The most a count of prompts, responses or tokens may be: far above any real run, and low enough
# that a typo (an extra zero run, 1e9) is refused in one line instead of an allocation.
MAX_COUNT = 1_000_000


def field_name(instance: object, attribute: attrs.Attribute) -> str:
    """``train.steps`` for a field of a config section (a class with ``section``), else the
    field's own name (``steps``)."""
    section = getattr(type(instance), "section", "")
    return f"{section}.{attribute.name}" if section else attribute.name


def _number(value: float) -> str:
    return f"{value:_}" if isinstance(value, int) else f"{value:g}"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def at_least(minimum: float) -> Validator:
    """A finite number ``>= minimum`` (NaN compares false both ways: it is refused by name)."""

    def check(instance: object, attribute: attrs.Attribute, value: float) -> None:
        name = field_name(instance, attribute)
        if not (_is_number(value) and math.isfinite(value)):
            raise ConfigError(f"{name}={value!r}: must be a finite number >= {minimum}")
        if value < minimum:
            raise ConfigError(f"{name}={value!r}: must be >= {minimum}")

    return check


def greater_than(bound: float) -> Validator:
    """A finite number ``> bound``."""

    def check(instance: object, attribute: attrs.Attribute, value: float) -> None:
        if not (_is_number(value) and math.isfinite(value) and value > bound):
            raise ConfigError(
                f"{field_name(instance, attribute)}={quoted(value)}: must be a finite number "
                f"> {_number(bound)}"
            )

    return check


def in_range(
    low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> Validator:
    """A finite number in ``[low, high]``; ``low_open`` / ``high_open`` exclude an end."""
    interval = (
        f"{'(' if low_open else '['}{_number(low)}, {_number(high)}{')' if high_open else ']'}"
    )

    def check(instance: object, attribute: attrs.Attribute, value: float) -> None:
        name = field_name(instance, attribute)
        if not (_is_number(value) and math.isfinite(value)):
            raise ConfigError(f"{name}={value!r}: must be a finite number in {interval}")
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            raise ConfigError(f"{name}={value!r}: must be in {interval}")

    return check


def count(minimum: int, maximum: int = MAX_COUNT) -> Validator:
    """An integer in ``[minimum, maximum]``."""
    return in_range(minimum, maximum)


def finite(instance: object, attribute: attrs.Attribute, value: float) -> None:
    """Any finite number."""
    if not (_is_number(value) and math.isfinite(value)):
        raise ConfigError(f"{field_name(instance, attribute)}={value!r}: must be a finite number")


def one_of(*allowed: str, also: str = "") -> Validator:
    """One of the ``allowed`` strings (``also``: words appended to the list, e.g. aliases)."""

    def check(instance: object, attribute: attrs.Attribute, value: str) -> None:
        if value not in allowed:
            raise ConfigError(
                f"{field_name(instance, attribute)}={quoted(value)}: must be one of "
                f"{', '.join(allowed)}{also}"
            )

    return check


def not_empty(instance: object, attribute: attrs.Attribute, value: str) -> None:
    """A string with something besides white space."""
    if not str(value).strip():
        raise ConfigError(f"{field_name(instance, attribute)}={quoted(value)}: must not be empty")
