"""Run-time shape checks at component boundaries (jaxtyping annotations, beartype for types).

Every public method of a registered component that carries jaxtyping annotations is wrapped by
:func:`shape_checked`. Arguments, the attrs bundles passed as arguments (their tensor fields) and
the return value are all checked in ONE dimension memo, so ``B`` in a ``Rollouts`` must equal ``B``
in a ``PolicyEval`` passed to the same call. A violation raises :class:`ShapeError` whose one-line
message names the component, the argument, the expected annotation, the actual shape and the
dimensions bound so far.
"""

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

import attrs
from beartype.door import is_bearable
from jaxtyping import AbstractArray, AnnotationError, jaxtyped
from torch import Tensor


class ShapeError(TypeError):
    """A tensor crossing a component boundary has the wrong shape or dtype."""


def _array_types(annotation: Any) -> list[Any]:
    """The jaxtyping array types inside an annotation (``X`` or ``X | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, AbstractArray):
        return [annotation]
    return [
        a
        for a in typing.get_args(annotation)
        if isinstance(a, type) and issubclass(a, AbstractArray)
    ]


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__}"


def _bind(bound: dict[str, int], annotation: Any, value: Any) -> None:
    """Remember the sizes of named dims (for the error message only; jaxtyping does the
    checking)."""
    if not isinstance(value, Tensor):
        return
    for arr in _array_types(annotation):
        names = arr.dim_str.split()
        if len(names) == value.dim():
            for name, size in zip(names, value.shape, strict=True):
                if name.isidentifier():
                    bound.setdefault(name, int(size))


def _check_value(where: str, annotation: Any, value: Any, bound: dict[str, int]) -> None:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return
    try:
        ok = is_bearable(value, annotation)
    except AnnotationError:
        # A symbolic dim such as 'T+1' whose base dim is not bound in this memo (a bundle built on
        # its own): it is checked where the bundle crosses a component boundary beside Rollouts.
        return
    if not ok:
        dims = ", ".join(f"{k}={v}" for k, v in bound.items()) or "none"
        expected = getattr(annotation, "__name__", None) or str(annotation)
        raise ShapeError(
            f"{where}: expected {_pretty(annotation, expected)}, got {_describe(value)} "
            f"(dimensions bound so far: {dims})"
        )
    _bind(bound, annotation, value)
    if attrs.has(type(value)):
        _check_fields(where, value, bound)


def _pretty(annotation: Any, fallback: str) -> str:
    arrs = _array_types(annotation)
    if not arrs:
        return fallback
    return " | ".join(f"{a.dtype.__name__}[Tensor, '{a.dim_str}']" for a in arrs) + (
        " | None" if type(None) in typing.get_args(annotation) else ""
    )


@functools.cache
def _class_hints(cls: type) -> dict[str, Any]:
    # Resolving annotations is slow and a bundle class never changes: do it once per class.
    return typing.get_type_hints(cls)


def _check_fields(where: str, bundle: Any, bound: dict[str, int]) -> None:
    hints = _class_hints(type(bundle))
    for field in attrs.fields(type(bundle)):
        ann = hints.get(field.name, Any)
        if _array_types(ann):
            _check_value(f"{where}.{field.name}", ann, getattr(bundle, field.name), bound)


def check_bundle(bundle: Any) -> None:
    """Check the tensor fields of one attrs bundle against their annotations (shared dims)."""

    @jaxtyped(typechecker=None)
    def run() -> None:
        _check_fields(type(bundle).__name__, bundle, {})

    run()


def shape_checked(owner: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``method`` so its annotated arguments and return value are checked in one memo."""
    signature = inspect.signature(method)
    hints = typing.get_type_hints(method)

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound_args = signature.bind(*args, **kwargs)
        dims: dict[str, int] = {}

        @jaxtyped(typechecker=None)
        def checked_call() -> Any:
            for name, value in bound_args.arguments.items():
                if name in hints and name != "return":
                    _check_value(
                        f"{owner}.{method.__name__}() argument '{name}'", hints[name], value, dims
                    )
            result = method(*args, **kwargs)
            if "return" in hints:
                _check_value(
                    f"{owner}.{method.__name__}() return value", hints["return"], result, dims
                )
            return result

        return checked_call()

    wrapper.__shape_checked__ = True  # type: ignore[attr-defined]
    return wrapper


def _has_checkable_annotation(method: Callable[..., Any]) -> bool:
    try:
        hints = typing.get_type_hints(method)
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check
        return False
    return any(_array_types(h) or (isinstance(h, type) and attrs.has(h)) for h in hints.values())


def wrap_public_methods(cls: type, owner: str) -> None:
    """Wrap every public method of ``cls`` that has tensor or bundle annotations (in place)."""
    for name, member in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("_"):
            continue
        if getattr(member, "__shape_checked__", False) or not _has_checkable_annotation(member):
            continue
        setattr(cls, name, shape_checked(owner, member))
