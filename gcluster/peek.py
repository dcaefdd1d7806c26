"""Reading a dispatch's name and sequence without decoding its JSON.

Filtering out an event type should cost a fraction of delivering it, so the
reader looks at the start of the raw message first. Discord writes the
envelope keys in the order t, s, op, d (`{"t":"MESSAGE_CREATE","s":42,...`);
a message laid out any other way is simply decoded in full, which is slower
but never wrong.
"""

from __future__ import annotations

from typing import Final

__all__ = ["peek_dispatch"]

_PREFIX: Final = b'{"t":"'
_NAME_END: Final = b'","s":'


def peek_dispatch(message: bytes) -> tuple[str, int] | None:
    """`(t, s)` of a dispatch laid out as Discord sends it, else None."""
    # Runs for every message: only C-level bytes methods, no per-byte Python.
    if not message.startswith(_PREFIX):
        return None
    end = message.find(_NAME_END, 6, 200)
    if end < 0:
        return None
    start = end + 6
    comma = message.find(b",", start, start + 21)
    if comma < 0:
        return None
    digits = message[start:comma]
    if not digits.isdigit():
        return None
    return message[6:end].decode("ascii", "replace"), int(digits)
