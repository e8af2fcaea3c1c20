"""The attrs validators of gfnlm's configuration and component options, one set for all.

Each raises :class:`~gfnlm.contracts.errors.ConfigError` (a ``ValueError``, which
:func:`~gfnlm.contracts.registry.build` prefixes with the component's kind and name) in one line
naming the field, the value and what is allowed. A run-config field is named with its section
(``train.lr``), a component option by its own name (``ratio``).
"""

import math
import types
import typing
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


# --- Types ---------------------------------------------------------------------------------------
# A config built in Python is checked against its annotations when it is constructed (and when a
# field is assigned), so `SamplingConfig(max_new_tokens="8")` is one line naming the field, not a
# TypeError deep inside a sampler. Values from YAML files and `key=value` overrides reach the
# constructor already converted by OmegaConf, so they pass these checks unchanged.


def _type_text(annotation: Any) -> str:
    """``int``, ``list[str]``, ``dict[str, Any]``: an annotation as a message shows it."""
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _has_type(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits ``annotation`` (see :func:`of_type`)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if annotation is float:
        return _is_number(value)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (types.UnionType, typing.Union):
        return any(_has_type(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(_has_type(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _has_type(k, args[0]) and _has_type(v, args[1]) for k, v in value.items()
        )
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def _got(value: Any, annotation: Any) -> str:
    """What ``value`` is, for the message: its type, or for a list or dict the item that does not
    fit (``list with int 3 at index 1``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and isinstance(value, list):
        index = next(i for i, v in enumerate(value) if not _has_type(v, args[0]))
        return f"list with {type(value[index]).__name__} {quoted(value[index])} at index {index}"
    if origin is dict and isinstance(value, dict):
        key = next(
            k for k, v in value.items() if not (_has_type(k, args[0]) and _has_type(v, args[1]))
        )
        return f"dict with {type(key).__name__} key {quoted(key)}"
    return type(value).__name__


def of_type(annotation: Any) -> Validator:
    """The value fits ``annotation`` (bool, int, float, str, list[X], dict[K, V], unions, ``Any``,
    classes; a bool is not an int, an int is a float). A string where a number or a bool belongs
    is refused, not parsed."""

    def check(instance: object, attribute: attrs.Attribute, value: Any) -> None:
        if _has_type(value, annotation):
            return
        # No parsing of "8" or "true": in Python such a string is a bug upstream (an environment
        # variable or a CSV cell read without int()), and which rules would parse it (Python's,
        # YAML's "yes"/"no") is a guess. YAML and key=value values are parsed when they load.
        scalar = annotation in (int, float, bool) and isinstance(value, str)
        hint = "; give the value itself, not its text" if scalar else ""
        raise ConfigError(
            f"{field_name(instance, attribute)}={quoted(value)}: must be of type "
            f"{_type_text(annotation)}, got {_got(value, annotation)}{hint}"
        )

    return check


def type_checked(cls: type, fields: list[attrs.Attribute]) -> list[attrs.Attribute]:
    """attrs ``field_transformer``: every field's annotation is checked (:func:`of_type`) before
    its own validators run. A field whose metadata sets ``objects`` accepts more in Python than
    its annotation says (a data set object where a path is read from YAML), and its own validator
    checks the type instead."""
    checked = []
    for field in fields:
        if field.type is None or field.metadata.get("objects"):
            checked.append(field)
            continue
        own = [field.validator] if field.validator is not None else []
        checked.append(field.evolve(validator=attrs.validators.and_(of_type(field.type), *own)))
    return checked
