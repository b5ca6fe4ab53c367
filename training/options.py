"""Command-line options for the fields of any settings dataclass, typed as `TrainConfig`'s are (training/config.py).

    add_dataclass_options(parser, MySettings, skip=("rows",))
    values = dataclass_values(MySettings, vars(parser.parse_args(argv)))

Values stay strings on the command line and are read as their field's type afterwards by `coerce_value` ("false" is
False, "1e-4" a float, "none" None for an optional field); a tuple field takes one or more values, each read as the
tuple's item type. A bad value is a `ValueError` naming the option and the value.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from plumbing.command_line import CommandParser
from plumbing.typed_values import coerce_value, type_name


def _default(item: dataclasses.Field) -> Any:
    return item.default if item.default is not dataclasses.MISSING else item.default_factory()


def _item_type(annotation: Any) -> Any | None:
    """The item type of a `tuple[X, ...]` annotation, else None."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is tuple else None


def add_dataclass_options(
    parser: CommandParser,
    cls: type,
    skip: Iterable[str] = (),
    choices: Mapping[str, Iterable[str]] | None = None,
    help: Mapping[str, str] | None = None,
) -> None:
    """One option per field of dataclass `cls` not in `skip` (`--field_name` and `--field-name`, the field's name first), default None (not
    given); `choices` and `help` per field name."""
    hints, skip, choices, help = typing.get_type_hints(cls), set(skip), dict(choices or {}), dict(help or {})
    for item in dataclasses.fields(cls):
        if item.name in skip:
            continue
        flags = [f"--{item.name}"] + ([f"--{item.name.replace('_', '-')}"] if "_" in item.name else [])
        multiple = _item_type(hints[item.name]) is not None
        parser.add_argument(
            *flags,
            dest=item.name,
            default=None,
            nargs="+" if multiple else None,
            choices=tuple(choices[item.name]) if item.name in choices else None,
            metavar=None if item.name in choices else type_name(_item_type(hints[item.name]) or hints[item.name]),
            help=help.get(item.name, f"default: {_default(item)!r}"),
        )


def dataclass_field_value(cls: type, name: str, value: Any, where: str) -> Any:
    """`value` (a string, a YAML value, or a list of them for a tuple field) as the type of field `name` of `cls`."""
    return coerce_value(name, value, typing.get_type_hints(cls)[name], where=where)


def dataclass_values(cls: type, given: Mapping[str, Any], where: str = "option `--{name}`") -> dict[str, Any]:
    """The values in `given` (e.g. `vars(args)`) of fields of `cls` that are not None, read as their field's types;
    `where` names the source in errors, with `{name}` for the field."""
    names = {item.name for item in dataclasses.fields(cls)}
    return {
        name: dataclass_field_value(cls, name, value, where.format(name=name))
        for name, value in given.items()
        if name in names and value is not None
    }


def read_settings_file(
    path: str | Path,
    known: Iterable[str],
    noun: str = "option",
    renamed: Mapping[str, str] | None = None,
    list_known: bool = False,
) -> dict[str, Any]:
    """The mapping of `noun`: value a YAML settings file holds, its values as written (read them with
    `dataclass_values`). Raises `FileNotFoundError` or one-line `ValueError`s: not valid YAML, not a mapping, or keys
    that are not in `known` (a key in `renamed` is told its new name; `list_known` lists the known ones)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"config file {path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {path} must hold a mapping of {noun}: value, got {type(loaded).__name__}")
    known, renamed = set(known), dict(renamed or {})
    unknown = sorted(set(loaded) - known)
    if unknown:
        moved = [f"{name} is now {renamed[name]}" for name in unknown if name in renamed]
        raise ValueError(
            f"config file {path}: unknown {noun}(s) {unknown}"
            + (f" ({'; '.join(moved)})" if moved else "")
            + (f"; known: {sorted(known)}" if list_known else "")
        )
    return loaded
