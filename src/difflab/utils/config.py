"""Small frozen config dataclasses with a validated dict/JSON round-trip."""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

from ..errors import UserError

C = TypeVar("C", bound="Config")


class ConfigError(UserError, ValueError):
    """A config with unknown keys, wrong types or out-of-range values."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Base for component configs: ``to_dict``/``from_dict`` round-trip; subclasses validate in ``check``."""

    def __post_init__(self) -> None:
        # a nested config given as its plain JSON mapping (Config(schedule={...})) is built from it
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            tp, v = hints.get(f.name), getattr(self, f.name)
            if isinstance(v, dict) and isinstance(tp, type) and issubclass(tp, Config):
                object.__setattr__(self, f.name, tp.from_dict(v, f"{type(self).__name__}.{f.name}"))
        self.check()

    def check(self) -> None:
        """Raise ConfigError for out-of-range values (override)."""

    def require_ints(self, names: tuple[str, ...], minimum: int) -> None:
        """ConfigError unless every named field is an integer >= minimum."""
        for name in names:
            v = getattr(self, name)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
                    f"{type(self).__name__}.{name} must be an integer >= {minimum}, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, Config) else (list(v) if isinstance(v, tuple) else v)
        return out

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any] | None, where: str = "") -> C:
        """Build from a dict, rejecting unknown keys and coercing lists to tuples and nested configs."""
        d = dict(d or {})
        name = where or cls.__name__
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ConfigError(f"{name}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for k, v in d.items():
            kwargs[k] = _coerce(hints[k], v, f"{name}.{k}")
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ConfigError(f"{name}: {e}") from None

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def _coerce(tp: Any, v: Any, where: str) -> Any:
    origin = get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, Config):
        if not isinstance(v, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(v).__name__}")
        return tp.from_dict(v, where)
    if origin is tuple and isinstance(v, (list, tuple)):
        return tuple(v)
    if origin is typing.Literal:
        if v not in get_args(tp):
            raise ConfigError(f"{where}: {v!r} is not one of {', '.join(map(repr, get_args(tp)))}")
        return v
    if tp is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if tp in (int, float, str, bool) and not isinstance(v, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {v!r}")
    return v


def read_json_object(path: str | Path, error: type[UserError], what: str = "") -> dict[str, Any]:
    """The JSON object in a file; ``error`` naming the file if it is missing, not JSON or not an object."""
    p = Path(path)
    name = f"{what} {p}" if what else str(p)
    if not p.is_file():
        raise error(f"{name} does not exist")
    size = p.stat().st_size
    if size > MAX_JSON_BYTES:
        raise error(f"{name} is {size} bytes; a difflab JSON file is at most {MAX_JSON_BYTES}")
    try:
        d = loads_json(p.read_bytes())
    except ValueError as e:  # bad JSON, bad UTF-8, a 5000-digit integer, nesting too deep
        raise error(f"{name} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise error(f"{name} must hold a JSON object")
    return d


#: Largest JSON file read as a config (a run's config.json with a trained beta table is a few hundred kB).
MAX_JSON_BYTES = 64 * 2**20
#: Deepest nesting of [ and { accepted (difflab's own files nest fewer than 10 levels).
MAX_JSON_DEPTH = 64


def loads_json(text: str | bytes) -> Any:
    """json.loads with the failures of hostile input as ValueError: nesting deeper than MAX_JSON_DEPTH (instead
    of a RecursionError) and integers beyond Python's digit limit."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")  # UnicodeDecodeError is a ValueError
    depth = _nesting(text) if text.count("[") + text.count("{") > MAX_JSON_DEPTH else 0
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested {depth} levels deep; at most {MAX_JSON_DEPTH} are read")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _nesting(text: str) -> int:
    """The deepest nesting of brackets and braces outside strings (a linear scan, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object of a config file (ConfigError otherwise)."""
    return read_json_object(path, ConfigError, "config file")


def require(cond: bool, msg: str) -> None:
    """Raise ConfigError(msg) unless cond."""
    if not cond:
        raise ConfigError(msg)
