"""Token: what it accepts, where its secret goes, and that it never shows itself."""

from __future__ import annotations

import copy
import pickle

import pytest

from gcluster._token import Token

LONG = "MTA5ODc2NTQzMjEwOTg3NjU0.GhJkLm.a-real-length-token"


@pytest.mark.parametrize("raw", [LONG, f"Bot {LONG}", f"  Bot   {LONG}\n", f"\t{LONG} "])
def test_the_prefix_and_whitespace_are_dropped(raw: str) -> None:
    token = Token(raw)
    assert token.secret == LONG
    assert token.authorization == f"Bot {LONG}"


def test_a_token_can_be_made_from_a_token() -> None:
    token = Token(Token(f"Bot {LONG}"))
    assert token.secret == LONG and token == Token(LONG)


@pytest.mark.parametrize("raw", ["", "   ", "Bot", "Bot ", " Bot  "])
def test_an_empty_token_is_refused(raw: str) -> None:
    with pytest.raises(ValueError) as caught:
        Token(raw)
    assert str(caught.value) == "the token is empty"


@pytest.mark.parametrize(("raw", "kind"), [(None, "NoneType"), (b"token", "bytes"), (12, "int")])
def test_a_token_that_is_not_a_str_is_refused(raw: object, kind: str) -> None:
    with pytest.raises(TypeError) as caught:
        Token(raw)  # type: ignore[arg-type]
    assert str(caught.value) == f"the token must be a str, not {kind}"


def test_equality_and_hashing_follow_the_secret() -> None:
    assert Token("abc") == Token("Bot abc")
    assert Token("abc") != Token("abd")
    assert Token("abc") != "abc"  # a bare string is not a Token
    assert hash(Token("abc")) == hash(Token("Bot abc"))
    assert hash(Token("abc")) != hash(Token("xyz"))
    assert len({Token("abc"), Token("Bot abc"), Token("xyz")}) == 2


def test_the_token_never_shows_itself() -> None:
    token = Token(LONG)
    assert repr(token) == str(token) == f"{token}" == "Token('<redacted>')"
    assert LONG not in repr([token]) and LONG not in repr({"token": token})


def test_a_token_cannot_be_pickled_or_copied_through_pickle() -> None:
    token = Token(LONG)
    with pytest.raises(TypeError) as caught:
        pickle.dumps(token)
    assert str(caught.value) == "a Token cannot be pickled"
    with pytest.raises(TypeError):
        copy.copy(token)


def test_redaction_replaces_every_occurrence() -> None:
    token = Token(LONG)
    text = f"{LONG} and again {LONG}."
    assert token.redact(text) == "<token> and again <token>."
    assert token.redact("nothing here") == "nothing here"
    assert token.appears_in(text) and not token.appears_in(token.redact(text))


# A token of 16 characters or more is redacted even inside a longer run of
# token characters; a shorter one only where it stands alone.
SIXTEEN = "abcdefghijklmnop"
FIFTEEN = SIXTEEN[:15]


def test_a_sixteen_character_token_is_redacted_anywhere() -> None:
    token = Token(SIXTEEN)
    assert token.redact(f"x{SIXTEEN}x") == "x<token>x"
    assert token.appears_in(f"x{SIXTEEN}x")


def test_a_fifteen_character_token_is_redacted_only_alone() -> None:
    token = Token(FIFTEEN)
    assert token.redact(f"x{FIFTEEN}x") == f"x{FIFTEEN}x"
    assert not token.appears_in(f"x{FIFTEEN}x")
    assert token.redact(f"({FIFTEEN})") == "(<token>)"
    assert token.appears_in(f"({FIFTEEN})")


def test_a_token_with_regex_characters_is_matched_literally() -> None:
    # Not a real token's alphabet, but the pattern must not treat it as a regex.
    token = Token("a+b")
    assert token.redact("a+b aab") == "<token> aab"
    assert not token.appears_in("aab")
