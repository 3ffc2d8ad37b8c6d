"""Typed dataclasses from YAML: read a file remembering each key's file:line, set dotted
overrides, build nested dataclasses with every value checked against its annotation, and
list (key, default, help) for `--help`; the field helper (`opt`) and the value checks the
sections use. Generic: lmtune's own sections live in config.py."""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from lmtune.errors import ConfigError, LmtuneError


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse YAML safely and remember the `file:line` of every dotted key."""
    if not path.is_file():
        raise LmtuneError(f"{path}: config file not found")
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise LmtuneError(f"{path}: not valid YAML: {e}") from None
    if node is None:
        return {}, {}
    lines: dict[str, str] = {}

    def walk(n: yaml.Node, prefix: str) -> Any:
        if isinstance(n, yaml.MappingNode):
            out = {}
            for k, v in n.value:
                key = f"{prefix}{k.value}"
                lines[key] = f"{path}:{k.start_mark.line + 1}"
                out[k.value] = walk(v, key + ".")
            return out
        return yaml.safe_load(yaml.serialize(n))

    data = walk(node, "")
    if not isinstance(data, dict):
        raise LmtuneError(f"{path}:1: a config file must be a mapping of keys to values")
    return data, lines


def parse_scalar(text: str) -> Any:
    """A command-line value as YAML reads it; as typed where YAML reads nothing from it
    (`|` and `>` start block scalars: `data.label_separator=|` means the character)."""
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text
    return text if value in ("", None) and text.strip() not in ("", "null", "~") else value


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise LmtuneError(f"command line: {key!r}: {part!r} is not a section")
    node[leaf] = value


def build(cls: type, raw: dict[str, Any], prefix: str, lines: dict[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        full = prefix + str(key)
        if key not in names:
            _unknown_key(full, names, prefix, lines)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise LmtuneError(f"{lines.get(full, 'config')}: {full!r} is a section; "
                                  f"set its keys, e.g. {full}.{dataclasses.fields(tp)[0].name}")
            kwargs[key] = build(tp, value, full + ".", lines)
        else:
            kwargs[key] = _coerce(value, tp, full, lines)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        full = prefix + e.key
        raise LmtuneError(f"{lines.get(full, 'config')}: {full}: {e.msg}") from None


def _unknown_key(full: str, names: list[str], prefix: str, lines: dict[str, str]) -> None:
    valid = [prefix + n for n in names]
    close = difflib.get_close_matches(full, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise LmtuneError(f"{lines.get(full, 'config')}: unknown key {full!r}.{hint} "
                      f"Valid keys here: {', '.join(valid)}")


def _coerce(value: Any, tp: Any, key: str, lines: dict[str, str]) -> Any:
    """Check (and gently convert) one value against its annotated type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = LmtuneError(f"{lines.get(key, 'config')}: {key}: expected {_type_name(tp)}, "
                      f"got {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, args[0], key, lines) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp in (int, float):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, float) and tp is int:
            if not value.is_integer():
                raise bad
            value = int(value)
        if not isinstance(value, (int, float)):
            raise bad
        return tp(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise bad
        return str(value)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf key: the body of `lmtune train --help`."""
    rows = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, prefix + f.name + ".")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((prefix + f.name, repr(default), f.metadata.get("help", "")))
    return rows


# ------------------------------------------------------------- fields and checks


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a help string (mutable defaults are copied per instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def choice(key: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(key, f"must be one of {', '.join(map(str, allowed))}; got {value!r}")


def parse_label_values(key: str, text: str, high: float = float("inf")) -> dict[str, float]:
    """'fresh=1,rotten=2.5' → {"fresh": 1.0, "rotten": 2.5}; each value in (0, high)."""
    out = {}
    for part in text.split(","):
        label, sep, number = part.strip().rpartition("=")
        try:
            value = float(number)
        except ValueError:
            value = -1.0
        if not sep or not label or not 0 < value < high:
            bound = f"in (0, {high:g})" if high < float("inf") else "> 0"
            raise ConfigError(key, f"must be 'label=value,...' with values {bound}; got "
                              f"{text!r}")
        out[label] = value
    return out


def parse_thresholds(text: str) -> dict[str, float] | float:
    """eval.thresholds other than tune: one number (every label), or per label."""
    try:
        value = float(text)
    except ValueError:
        return parse_label_values("thresholds", text, high=1.0)
    if not 0 < value < 1:
        raise ConfigError("thresholds", f"must be in (0, 1), 'label=t,...' or tune; got "
                          f"{text!r}")
    return value


def positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}; got {value}")
