"""GET /gateway/bot's answer is checked before the cluster adopts it (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from gcluster import http
from gcluster._token import Token
from gcluster.errors import ClusterStartError

TOKEN = Token("Bot MTA5ODc2NTQzMjEwOTg3NjU0.GhJkLm.http-unit-token")


class Answer:
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
        self.status_code = status
        self.headers = headers or {}
        self._body = body

    def json(self) -> Any:
        return self._body


def answering(monkeypatch: pytest.MonkeyPatch, answer: Answer) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def call(func: Any, url: str, **kwargs: Any) -> Answer:
        calls.append(kwargs)
        return answer

    monkeypatch.setattr(http, "call_blocking", call)
    return calls


def body(url: Any) -> dict[str, Any]:
    limit = {"total": 1000, "remaining": 999, "reset_after": 1000, "max_concurrency": 1}
    return {"url": url, "shards": 2, "session_start_limit": limit}


@pytest.mark.parametrize(
    ("api_base", "url", "adopted"),
    [
        ("https://discord.com/api/v10", "wss://gateway.discord.gg", True),
        ("https://discord.com/api/v10", "ws://gateway.discord.gg", False),  # weaker
        ("http://127.0.0.1:9/api/v10", "ws://127.0.0.1:9", True),  # plain, as configured
        ("https://discord.com/api/v10", "https://gateway.discord.gg", False),
        ("https://discord.com/api/v10", "wss://", False),
        ("https://discord.com/api/v10", "wss://[::1", False),
        ("https://discord.com/api/v10", 42, False),
    ],
)
def test_the_gateway_url_must_be_a_websocket_url_no_weaker_than_the_api(
    monkeypatch: pytest.MonkeyPatch, api_base: str, url: Any, adopted: bool
) -> None:
    answering(monkeypatch, Answer(200, body(url)))
    if adopted:
        assert http.get_gateway_bot(api_base, TOKEN).url == url
    else:
        with pytest.raises(ClusterStartError, match="unusable gateway url"):
            http.get_gateway_bot(api_base, TOKEN)


def test_a_redirect_is_not_followed_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = answering(monkeypatch, Answer(302, headers={"Location": "http://elsewhere/"}))
    with pytest.raises(ClusterStartError) as caught:
        http.get_gateway_bot("https://discord.com/api/v10", TOKEN)
    assert calls[0]["allow_redirects"] is False
    assert "answered 302 (Location: http://elsewhere/; not followed)" in str(caught.value)
