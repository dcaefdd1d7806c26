"""Reading a dispatch's name and sequence without decoding its JSON.

Filtering out an event type should cost a fraction of delivering it, so the
reader looks at the start of the raw message first. Discord writes the
envelope keys in the order t, s, op, d (`{"t":"MESSAGE_CREATE","s":42,...`);
a message laid out any other way is simply decoded in full, which is slower
but never wrong.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["peek_dispatch"]

# One C-level match per message, no per-byte Python. Event names are
# upper-case ASCII; the sequence is plain digits ending at the next comma
# (so `null`, `1_0`, `+5` and a cut-off number do not match). At most 18
# digits, so every peeked sequence fits the heartbeat's 64-bit integer; a
# longer one is decoded in full and checked there.
_ENVELOPE: Final = re.compile(rb'\{"t":"([A-Z0-9_]{1,100})","s":([0-9]{1,18}),')


def peek_dispatch(message: bytes) -> tuple[str, int] | None:
    """`(t, s)` of a dispatch laid out as Discord sends it, else None."""
    match = _ENVELOPE.match(message)
    if match is None:
        return None
    name, digits = match.groups()
    return name.decode("ascii"), int(digits)
