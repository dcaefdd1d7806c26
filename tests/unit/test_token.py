"""The token's redaction: every occurrence goes, and nothing else is touched."""

from __future__ import annotations

import pytest

from gcluster._token import Token


def test_a_short_token_does_not_mangle_other_text() -> None:
    token = Token("1")
    text = "connecting to http://127.0.0.1:9/api failed (errno 111)"
    assert token.redact(text) == text
    assert token.redact("token=1, again: 1") == "token=<token>, again: <token>"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bot MTA5.Gh", "Bot <token>"),
        ("a/MTA5.Gh?x", "a/<token>?x"),
        ('{"token":"MTA5.Gh"}', '{"token":"<token>"}'),
        ("MTA5.Gh" * 2, "MTA5.Gh" * 2),  # not the token: a longer run
        ("xMTA5.Gh", "xMTA5.Gh"),
    ],
)
def test_a_short_token_is_redacted_where_it_stands_alone(text: str, expected: str) -> None:
    token = Token("Bot MTA5.Gh")
    assert token.redact(text) == expected
    assert token.appears_in(text) == (expected != text)


LONG = "MTA5ODc2NTQzMjEwOTg3NjU0.GhJkLm.a-real-length-token"


@pytest.mark.parametrize("text", [f"auth_{LONG}", f"{LONG}{LONG}", f"x{LONG}y", f"Bot {LONG}"])
def test_a_real_length_token_is_redacted_wherever_it_appears(text: str) -> None:
    token = Token(LONG)
    assert LONG not in token.redact(text) and token.appears_in(text)
