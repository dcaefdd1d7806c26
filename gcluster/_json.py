"""`to_dict()` for the snapshot values an application prints, logs or serves.

`Information`, `Latency` and the stats classes are dataclasses holding enums,
errors and tuples, which `json.dumps` refuses; an application serving them
(e.g. from Flask) would write the same conversion each time. `to_dict()`
turns one into plain dicts, lists, strings and numbers that `json.dumps` takes
as they are.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

__all__ = ["JsonReady", "json_ready"]


def json_ready(value: object) -> Any:
    """`value` as JSON-ready data.

    A dataclass becomes a dict of its fields (its own `to_dict()` when it has
    one), an enum its value, an exception its message, a tuple, list or set a
    list, and a mapping a dict with string keys (None becomes "none").

    Raises:
        TypeError: a value of another type.
    """
    if value is None or isinstance(value, str | bool | float):
        return value
    if isinstance(value, enum.Enum):  # before int: IntEnum and IntFlag are ints
        return json_ready(value.value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, BaseException):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        to_dict = getattr(value, "to_dict", None)
        if callable(to_dict):
            return to_dict()
        return {f.name: json_ready(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {_key(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, tuple | list | set | frozenset):
        return [json_ready(v) for v in value]
    raise TypeError(f"no JSON form for {type(value).__name__}")


def _key(key: object) -> str:
    if key is None:
        return "none"
    if isinstance(key, enum.Enum):
        key = key.value
    return key if isinstance(key, str) else str(key)


class JsonReady:
    """Gives a dataclass `to_dict()`: one key per field, every value JSON-ready."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """This value as a dict that `json.dumps` takes as it is.

        One key per field; enums become their value, errors their message,
        tuples lists, and nested values dicts of their own.
        """
        return {f.name: json_ready(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]
