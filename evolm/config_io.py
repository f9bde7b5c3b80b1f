"""Reading settings into nested dataclasses: TOML files, dotted ``--set`` keys, type coercion.

Generic over any dataclass tree (:class:`evolm.config.RunConfig` is the one evolm uses); every mistake
is a :class:`~evolm.errors.UsageError` naming the key, never a traceback.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from evolm.errors import UsageError


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, expected: Any, key: str) -> Any:
    """Convert ``value`` (from TOML or a ``--set`` string) to the field's type, or raise UsageError."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(expected) if t is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        expected = options[0]
    if expected is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UsageError(f"config field {key} must be true or false, got {value!r}")
    if expected is int:
        if isinstance(value, bool):
            raise UsageError(f"config field {key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise UsageError(f"config field {key} must be an integer, got {value!r}")
    if expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UsageError(f"config field {key} must be a number, got {value!r}")
    if expected is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UsageError(f"config field {key} must be a string, got {value!r}")
    raise UsageError(f"config field {key} has an unsupported type")  # pragma: no cover


def apply_mapping(target, mapping: dict, prefix: str = "") -> None:
    types_ = _field_types(type(target))
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if key not in types_:
            raise UsageError(f"unknown config key {dotted}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UsageError(f"config field {dotted} must be a table of settings, got {value!r}")
            apply_mapping(current, value, prefix=f"{dotted}.")
        else:
            setattr(target, key, _coerce(value, types_[key], dotted))


def set_dotted(config: Any, key: str, value: Any) -> None:
    """Set ``config.<key>`` from a dotted path such as ``model.width``, coercing the value's type."""
    target: Any = config
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = getattr(target, part, None) if part in _field_types(type(target)) else None
        if not dataclasses.is_dataclass(child):
            raise UsageError(f"unknown config key {'.'.join(parts[: depth + 1])}")
        target = child
    apply_mapping(target, {parts[-1]: value}, prefix=".".join(parts[:-1]) + "." if len(parts) > 1 else "")


def parse_assignment(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise UsageError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"config file {path} is a folder, not a TOML file") from None
    except OSError as error:
        raise UsageError(f"config file {path} cannot be read: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"config file {path} is not valid TOML: {error}") from None
