"""Command-line flags generated from config dataclasses, so each default and help text lives once.

``add_config_flags(parser, Cls)`` adds one flag per field of ``Cls`` (``mm.config.opt`` fields):
the field's default, its help text and its type. Nested dataclasses become dotted flags
(``--cache.sink-text``, the same key a YAML override names), ``Literal`` fields take choices,
``bool`` fields ``--x/--no-x``, list fields one or more values (repeatable). Fields no flag can
express (mappings, lists of dataclasses) stay YAML-only. ``config_from_args`` builds the
dataclass back from the parsed flags, checked like a YAML file (``mm.config.from_dict``).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

METAVAR = {int: "N", float: "X", str: "TEXT"}


class _ListAction(argparse.Action):
    """Values of a list flag: the first use replaces the default, later uses add to it."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest)
        setattr(namespace, self.dest, [*([] if current is self.default else current), *values])


def _optional(tp: Any) -> Any:
    """``X | None`` -> ``X`` (None stays the default; the flag sets a value)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _argument(tp: Any) -> dict | None:
    """add_argument keywords for a field type, or None when no flag can express it."""
    origin = typing.get_origin(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        return {"choices": choices, "type": type(choices[0])}
    if origin in (list, tuple):
        item = (typing.get_args(tp) or (str,))[0]
        if item not in METAVAR:
            return None
        return {"nargs": "+", "action": _ListAction, "type": item, "metavar": METAVAR[item]}
    if tp in METAVAR:
        return {"type": tp, "metavar": METAVAR[tp]}
    return None


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    title: str | None = None,
    exclude: tuple[str, ...] = (),
    aliases: dict[str, tuple[str, ...]] | None = None,
    prefix: str = "",
) -> argparse._ArgumentGroup:
    """One flag per field of ``cls`` (recursing into nested dataclasses as ``--sub.field``), in a
    group titled ``title``. ``exclude``: dotted keys left out; ``aliases``: extra flag names per key
    (old spellings). Every field needs a default (config dataclasses have one)."""
    group = parser.add_argument_group(title or f"{cls.__name__} ({cls.__module__})")
    _add_fields(group, cls, cls(), prefix, set(exclude), aliases or {})
    return group


def _add_fields(group, cls, defaults, prefix: str, exclude: set, aliases: dict) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if key in exclude or not f.init:
            continue
        tp, default = _optional(hints[f.name]), getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            _add_fields(group, tp, default, key + ".", exclude, aliases)
            continue
        kw = _argument(tp)
        if kw is None:
            continue
        flags = ["--" + key.replace("_", "-"), *aliases.get(key, ())]
        action = group.add_argument(*flags, dest=key, default=default, **kw)
        text = f.metadata.get("help", "")
        # set after construction: some Python versions append their own default to bool flags
        action.help = (f"{text} " if text else "").replace("%", "%%") + f"(default: {_shown(default)})"


def config_from_args(cls: type, args: argparse.Namespace, prefix: str = ""):
    """The ``cls`` instance the flags of ``add_config_flags(parser, cls, prefix=prefix)`` describe;
    fields without a flag keep their defaults. Invalid values raise ``ConfigError``."""
    from mm.config import from_dict

    return from_dict(cls, _values(cls, vars(args), prefix), prefix.rstrip("."))


def _values(cls, given: dict, prefix: str) -> dict:
    hints, out = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if dataclasses.is_dataclass(_optional(hints[f.name])):
            out[f.name] = _values(_optional(hints[f.name]), given, key + ".")
        elif key in given:
            out[f.name] = given[key]
    return out
