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
_SEQUENCE: Final = b'"s":'


def peek_dispatch(message: bytes) -> tuple[str, int | None] | None:
    """`(t, s)` of a dispatch laid out as Discord sends it, else None."""
    if not message.startswith(_PREFIX):
        return None
    end = message.find(b'"', 6, 200)
    if end < 0:
        return None
    name = message[6:end]
    start = end + 2
    if message[end + 1 : start] != b"," or message[start : start + 4] != _SEQUENCE:
        return None
    digits_end = start + 4
    limit = digits_end + 20
    while digits_end < limit and 48 <= message[digits_end] <= 57:
        digits_end += 1
    digits = message[start + 4 : digits_end]
    if not digits:
        return None
    return name.decode("ascii", "replace"), int(digits)
