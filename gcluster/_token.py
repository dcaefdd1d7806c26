"""The bot token, kept out of every repr, log line and error message.

A token that leaks into a log or a crash report lets anyone run the bot, so the
library never holds it as a bare string: `Token` shows itself redacted, and
the two places that need the secret (the IDENTIFY/RESUME payload and the REST
Authorization header) ask for it by name.
"""

from __future__ import annotations

import re
from typing import Final, NoReturn

from gcluster.errors import ConfigError

__all__ = ["Token"]

_PREFIX: Final = "Bot "
# What a token is made of (base64url and dots). A short token (a test's "1")
# is only redacted where it stands alone, not inside a longer run of these, so
# 127.0.0.1 does not become <token>27.0.0.<token>. A real token (about 70
# characters) cannot turn up by chance and is redacted wherever it appears.
_TOKEN_CHARS: Final = "A-Za-z0-9_.-"
_SHORT: Final = 16


class Token:
    """A bot token with or without the "Bot " prefix; never printed."""

    __slots__ = ("_pattern", "_raw")
    _raw: str
    _pattern: re.Pattern[str]

    def __init__(self, token: str | Token) -> None:
        if isinstance(token, Token):
            token = token._raw
        if not isinstance(token, str):
            raise TypeError(f"the token must be a str, not {type(token).__name__}")
        token = token.strip()
        if token.startswith(_PREFIX) or token == _PREFIX.strip():
            token = token[len(_PREFIX) :].strip()
        if not token:
            raise ConfigError("the token is empty")
        self._raw = token
        escaped = re.escape(token)
        if len(token) < _SHORT:
            escaped = f"(?<![{_TOKEN_CHARS}]){escaped}(?![{_TOKEN_CHARS}])"
        self._pattern = re.compile(escaped)

    @property
    def authorization(self) -> str:
        """The value of the REST Authorization header: "Bot <token>"."""
        return _PREFIX + self._raw

    @property
    def secret(self) -> str:
        """The bare token, as IDENTIFY and RESUME carry it."""
        return self._raw

    def redact(self, text: str) -> str:
        """`text` with every occurrence of the token replaced by "<token>"."""
        return self._pattern.sub("<token>", text) if self._raw in text else text

    def appears_in(self, text: str) -> bool:
        """Whether `text` holds the token (where `redact` would replace it)."""
        return self._raw in text and self._pattern.search(text) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Token) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return "Token('<redacted>')"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        # Pickling would write the secret somewhere the caller did not choose.
        raise TypeError("a Token cannot be pickled")
