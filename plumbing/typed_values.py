"""Typed values from text: a command-line string or a YAML value read as a field's annotated type.

One reader for every command that takes typed options (`training/config.py`'s `TrainConfig`, the recipe options of
`conversion/convert_clip.py`): "1e-5" is a float, "false" / "off" a bool, "none" the None of an optional field.
"""

from __future__ import annotations

import types
import typing
from typing import Any

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def type_name(annotation: Any) -> str:
    """`annotation` as a reader sees it: "float", "str | None"."""
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def coerce_value(name: str, value: Any, annotation: Any, where: str | None = None) -> Any:
    """`value` as the field's type, from a command-line string or a YAML value.

    Strings are read as the type ("1e-5" -> 1e-05, which YAML leaves a string; "false" -> False; "none" -> None for
    optional fields); an int is a float where a float is wanted; a `tuple[X, ...]` takes a list (or one value) of X,
    each read as X. Anything else of the wrong type is a `ValueError` naming the option (`where`, default
    "config `name`") and the value.
    """
    if typing.get_origin(annotation) is tuple:
        item = typing.get_args(annotation)[0]
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # one value of a tuple field, from a YAML scalar
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where or f'config `{name}`'}: expected a list of {type_name(item)}, got {value!r}")
        return tuple(coerce_value(name, part, item, where=where) for part in value)
    options = (
        typing.get_args(annotation)
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        else (annotation,)
    )
    if value is None and type(None) in options:
        return None
    if isinstance(value, str) and type(None) in options and value.strip().lower() in ("none", "null", ""):
        return None
    for kind in options:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                return value.strip().lower() in _TRUE
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str):
                try:
                    return int(value.strip())
                except ValueError:
                    continue
        elif kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value.strip())
                except ValueError:
                    continue
        elif kind is str:
            if isinstance(value, str):
                return value
        elif typing.get_origin(kind) is dict or kind is dict:
            if isinstance(value, dict):
                return value
    raise ValueError(f"{where or f'config `{name}`'}: expected {type_name(annotation)}, got {value!r}")


__all__ = ["coerce_value", "type_name"]
