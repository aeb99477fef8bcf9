"""Config dataclasses from plain dicts (JSON, YAML): unknown keys, missing keys and wrong types are errors."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (int, float, str, bool, list[...], X | None)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and (not args or all(_type_ok(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def config_from_dict(cls: type[T], d: Any, *, what: str, complete: bool = False) -> T:
    """Build the dataclass ``cls`` from ``d``, checking keys and value types first.

    Args:
        cls: a config dataclass (its ``__post_init__`` then checks the values).
        d: the mapping read from a file.
        what: the name used in messages (``"dalle"``, ``"vqvae"``, ...).
        complete: every field must be present (a saved config); otherwise defaults fill in
            (a preset section). Fields named in the class's ``ADDED_LATER`` may be absent even
            then: configs saved before they existed get the default, which keeps their behaviour.
    Returns:
        The config.
    Raises:
        ValueError: not a mapping, unknown or missing keys, a value of the wrong type or range.
    """
    if not isinstance(d, dict):
        raise ValueError(f"{what} config must be a mapping, got {type(d).__name__}")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"unknown {what} config keys: {unknown}")
    missing = [n for n in names if n not in d and n not in getattr(cls, "ADDED_LATER", ())]
    if complete and missing:
        raise ValueError(f"{what} config is missing {missing}")
    hints = typing.get_type_hints(cls)
    for name, value in d.items():
        if not _type_ok(value, hints[name]):
            raise ValueError(f"{what}.{name} must be {_type_name(hints[name])}, got {value!r}")
    return cls(**d)
