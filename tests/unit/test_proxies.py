"""Proxy URLs, the environment's proxies and the CONNECT exchange, without sockets."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import requests

from gcluster import Cluster, ConfigError, Intents
from gcluster import http as gateway_http
from gcluster._token import Token
from gcluster.errors import ClusterStartError
from gcluster.proxy import (
    MAX_HEADERS,
    Proxy,
    ProxyConnect,
    ProxyError,
    check_proxy_option,
    parse_proxy,
    resolve_proxy,
)
from gcluster.threaded import ThreadedClusterBuilder

TOKEN = Token("Bot MTA5ODc2NTQzMjEwOTg3NjU0.GhJkLm.proxy-unit-token")
PROXY_VARIABLES = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "REQUEST_METHOD",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# --- the URL ------------------------------------------------------------------


def test_a_proxy_url_with_percent_encoded_credentials() -> None:
    proxy = parse_proxy("http://us%40er:p%3Ass%20word@proxy.corp:3128/")
    assert (proxy.host, proxy.port) == ("proxy.corp", 3128)
    assert (proxy.username, proxy.password) == ("us@er", "p:ss word")
    assert proxy.authorization() == "Basic " + base64.b64encode(b"us@er:p:ss word").decode()
    assert parse_proxy(proxy.url) == proxy  # requests gets it back intact
    for shown in (repr(proxy), str(proxy), proxy.display):
        assert "p:ss" not in shown and "p%3Ass" not in shown and "us@er" not in shown
        assert "***@proxy.corp:3128" in shown


def test_a_proxy_without_credentials_and_an_ipv6_one() -> None:
    assert parse_proxy("http://10.0.0.1:8080").authorization() is None
    assert parse_proxy("http://10.0.0.1:8080").display == "http://10.0.0.1:8080"
    six = parse_proxy("http://[::1]:3128")
    assert six.host == "::1" and six.display == "http://[::1]:3128"
    assert parse_proxy("http://user@h:1").password == ""


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("https://u:hunter2@proxy:3128", "https:// proxies"),
        ("socks5://u:hunter2@proxy:1080", "must start with http://"),
        ("proxy:3128", "must start with http://"),
        ("http://u:hunter2@proxy", "give the proxy's port"),
        ("http://u:hunter2@proxy:0", "within 1..65535"),
        ("http://u:hunter2@proxy:65536", "cannot be parsed"),
        ("http://u:hunter2@proxy:port", "cannot be parsed"),
        ("http://u:hunter2@:3128", "no host"),
        ("http://u:hunter2@proxy:3128/path", "no path"),
        ("http://u:hunter2@proxy:3128/?q=1", "no path"),
        ("http://u:hunter2@proxy:3128#f", "no path"),
    ],
)
def test_a_bad_proxy_url_is_a_config_error_that_hides_the_password(
    text: str, complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint) as caught:
        Cluster("token", Intents.GUILDS, proxy=text)
    assert "hunter2" not in chain_text(caught.value)


def chain_text(err: BaseException | None) -> str:
    """The messages of `err` and of every exception chained to it."""
    texts = []
    while err is not None:
        texts.append(f"{err!r} {err}")
        err = err.__cause__ or err.__context__
    return " ".join(texts)


@pytest.mark.parametrize("value", [True, 3128, b"http://proxy:3128", ["http://proxy:3128"]])
def test_a_proxy_option_of_the_wrong_kind_says_what_is_accepted(value: Any) -> None:
    with pytest.raises(ConfigError, match="None|False"):
        Cluster("token", Intents.GUILDS, proxy=value)


def test_the_option_is_kept_as_a_proxy_whose_repr_hides_the_credentials() -> None:
    cluster = Cluster("token", Intents.GUILDS, proxy="http://bob:hunter2@proxy:3128")
    config = cluster.config()
    assert config.proxy == Proxy("proxy", 3128, "bob", "hunter2")
    assert "hunter2" not in repr(config) and "bob" not in repr(config)
    assert Cluster("token", Intents.GUILDS).config().proxy is None
    assert Cluster("token", Intents.GUILDS, proxy=False).config().proxy is False


def test_both_builders_take_the_option() -> None:
    built = Cluster.builder("token", Intents.GUILDS).proxy("http://proxy:3128").build()
    assert built.config().proxy == Proxy("proxy", 3128)
    threaded = ThreadedClusterBuilder("token", Intents.GUILDS).proxy(False)
    assert "proxy" in repr(threaded)
    with pytest.raises(ConfigError, match="must start with http://"):
        Cluster.builder("token", Intents.GUILDS).proxy("ftp://proxy:21").build()


def test_redact_hides_the_password_as_given_and_percent_encoded() -> None:
    proxy = parse_proxy("http://bob:p%2Fw@proxy:3128")
    assert proxy.redact(f"boom {proxy.url} p/w p%2Fw") == "boom *** *** ***"
    plain = parse_proxy("http://proxy:3128")
    assert plain.redact(f"through {plain.display}") == "through http://proxy:3128"


# --- which proxy a URL goes through -------------------------------------------


def test_an_explicit_proxy_wins_over_the_environment_and_no_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://env:1")
    monkeypatch.setenv("NO_PROXY", "gateway.discord.gg")
    chosen = resolve_proxy("http://mine:2", "wss://gateway.discord.gg")
    assert chosen == Proxy("mine", 2)


def test_false_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://env:1")
    monkeypatch.setenv("ALL_PROXY", "http://env:1")
    assert resolve_proxy(False, "wss://gateway.discord.gg") is None
    assert resolve_proxy(False, "https://discord.com/api/v10/gateway/bot") is None


def test_none_follows_the_environment_as_requests_does(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_proxy(None, "wss://gateway.discord.gg") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://secure:1")
    monkeypatch.setenv("HTTP_PROXY", "http://plain:2")
    # wss goes where https goes, ws where http goes.
    assert resolve_proxy(None, "wss://gateway.discord.gg") == Proxy("secure", 1)
    assert resolve_proxy(None, "https://discord.com/api") == Proxy("secure", 1)
    assert resolve_proxy(None, "ws://127.0.0.1:9") == Proxy("plain", 2)
    monkeypatch.setenv("NO_PROXY", "discord.gg,127.0.0.0/8")
    assert resolve_proxy(None, "wss://gateway.discord.gg") is None  # a subdomain of discord.gg
    assert resolve_proxy(None, "ws://127.0.0.1:9") is None  # in the CIDR block
    assert resolve_proxy(None, "https://discord.com/api") == Proxy("secure", 1)


def test_all_proxy_and_a_variable_without_a_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALL_PROXY", "squid.corp:3128")
    assert resolve_proxy(None, "wss://gateway.discord.gg") == Proxy("squid.corp", 3128)


def test_a_bad_environment_proxy_names_the_variable_and_the_way_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://bob:hunter2@proxy:1080")
    with pytest.raises(ValueError, match="HTTPS_PROXY") as caught:
        resolve_proxy(None, "wss://gateway.discord.gg")
    assert "proxy=False" in str(caught.value) and "hunter2" not in str(caught.value)


def test_check_proxy_option_passes_values_through() -> None:
    proxy = Proxy("h", 1)
    assert check_proxy_option(proxy) is proxy
    assert check_proxy_option(None) is None and check_proxy_option(False) is False


# --- GET /gateway/bot's proxies -----------------------------------------------


def calls_of(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def call(func: Any, url: str, **kwargs: Any) -> Any:
        calls.append(kwargs)
        raise requests.ConnectionError("stop here")

    monkeypatch.setattr(gateway_http, "call_blocking", call)
    return calls


def merged(proxies: dict[str, str | None], url: str) -> Any:
    """What requests makes of `proxies` after merging in the environment."""
    session = requests.Session()
    settings = session.merge_environment_settings(url, dict(proxies), None, None, None)
    return requests.utils.select_proxy(url, settings["proxies"])


def test_the_rest_call_gets_the_chosen_proxy_and_never_the_environments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = "https://discord.com/api/v10"
    url = api + "/gateway/bot"
    monkeypatch.setenv("HTTPS_PROXY", "http://env:1")
    monkeypatch.setenv("ALL_PROXY", "http://env:1")
    calls = calls_of(monkeypatch)
    for option, expected in [
        (None, "http://env:1"),
        (False, None),
        (Proxy("mine", 2, "bob", "pw"), "http://bob:pw@mine:2"),
    ]:
        with pytest.raises(ClusterStartError):
            gateway_http.get_gateway_bot(api, TOKEN, proxy=option)
        assert merged(calls[-1]["proxies"], url) == expected


def test_a_proxy_for_a_plain_http_api_is_refused_before_the_token_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = calls_of(monkeypatch)
    with pytest.raises(ClusterStartError, match="in clear") as caught:
        gateway_http.get_gateway_bot(
            "http://127.0.0.1:9/api/v10", TOKEN, proxy="http://bob:hunter2@proxy:3128"
        )
    assert calls == []
    assert "hunter2" not in str(caught.value) and "proxy=False" in str(caught.value)
    # NO_PROXY reaches it directly.
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with pytest.raises(ClusterStartError, match="stop here"):
        gateway_http.get_gateway_bot("http://127.0.0.1:9/api/v10", TOKEN)


def test_a_rest_failure_through_a_proxy_hides_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def call(func: Any, url: str, **kwargs: Any) -> Any:
        raise requests.exceptions.ProxyError(f"cannot reach {kwargs['proxies']['https']}")

    monkeypatch.setattr(gateway_http, "call_blocking", call)
    with pytest.raises(ClusterStartError) as caught:
        gateway_http.get_gateway_bot(
            "https://discord.com/api/v10", TOKEN, proxy="http://bob:hunter2@proxy:3128"
        )
    message = str(caught.value)
    assert "through the proxy http://***@proxy:3128" in message
    assert caught.value.__cause__ is None and "hunter2" not in message


def test_a_tunnel_refused_to_requests_is_worded_as_the_websockets_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def call(func: Any, url: str, **kwargs: Any) -> Any:
        raise requests.exceptions.ProxyError(
            "Unable to connect to proxy: Tunnel connection failed: 407 hunter2 says no"
        )

    monkeypatch.setattr(gateway_http, "call_blocking", call)
    with pytest.raises(ClusterStartError) as caught:
        gateway_http.get_gateway_bot(
            "https://discord.com/api/v10", TOKEN, proxy="http://bob:hunter2@proxy:3128"
        )
    assert str(caught.value) == (
        "GET https://discord.com/api/v10/gateway/bot through the proxy http://***@proxy:3128 "
        "failed: the proxy answered 407 Proxy Authentication Required: it refused the credentials"
    )


# --- CONNECT --------------------------------------------------------------------


def exchange(answer: bytes, proxy: Proxy | None = None) -> bool:
    connect = ProxyConnect(proxy or Proxy("proxy", 3128), "gateway.discord.gg", 443)
    return connect.receive(answer)


def test_the_connect_request() -> None:
    request = ProxyConnect(Proxy("p", 1, "bob", "pw"), "gateway.discord.gg", 443).request
    assert request.startswith(b"CONNECT gateway.discord.gg:443 HTTP/1.1\r\n")
    assert b"Host: gateway.discord.gg:443\r\n" in request
    auth = base64.b64encode(b"bob:pw")
    assert b"Proxy-Authorization: Basic " + auth + b"\r\n" in request
    assert b"Proxy-Authorization" not in ProxyConnect(Proxy("p", 1), "h", 443).request
    assert ProxyConnect(Proxy("p", 1), "::1", 443).request.startswith(b"CONNECT [::1]:443 ")


def test_a_2xx_opens_the_tunnel_even_when_it_comes_in_pieces() -> None:
    connect = ProxyConnect(Proxy("p", 1), "h", 443)
    answer = b"HTTP/1.1 200 Connection established\r\nProxy-Agent: x\r\n\r\n"
    assert not any(connect.receive(answer[i : i + 1]) for i in range(len(answer) - 1))
    assert connect.receive(answer[-1:])
    assert exchange(b"HTTP/1.0 100 Continue\r\n\r\nHTTP/1.0 204 No Content\r\n\r\n")


@pytest.mark.parametrize(
    ("answer", "status", "complaint"),
    [
        (b"HTTP/1.1 403 Go away hunter2\r\nContent-Length: 0\r\n\r\n", 403, "403 Forbidden$"),
        (b"HTTP/1.1 502 Bad\r\n\r\n", 502, "502 Bad Gateway"),
        (b"HTTP/1.1 407 Auth\r\n\r\n", 407, "needs credentials, give them as http://user"),
        (b"HTTP/1.1 401 Auth\r\n\r\n", 401, "needs credentials"),
        (b"HTTP/1.1 599 Whatever\r\n\r\n", 599, "answered 599$"),
        (b"HTTP/1.1 200 OK\r\n\r\n\x16\x03", 200, "sent data into the tunnel"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", None, "no valid HTTP \\(malformed\\)"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEADERS, None, "headers exceed"),
        (b"", None, "closed the connection before answering"),
    ],
)
def test_anything_but_a_clean_2xx_is_refused(
    answer: bytes, status: int | None, complaint: str
) -> None:
    with pytest.raises(ProxyError, match=complaint) as caught:
        exchange(answer)
    assert caught.value.status == status
    assert "hunter2" not in str(caught.value)  # the proxy's own reason text is never repeated


def test_a_proxy_closing_mid_answer_is_refused() -> None:
    connect = ProxyConnect(Proxy("p", 1), "h", 443)
    assert connect.receive(b"HTTP/1.1 200 Conn") is False
    with pytest.raises(ProxyError, match="closed the connection"):
        connect.receive(b"")


def test_credentials_refused_are_told_apart_from_credentials_missing() -> None:
    with pytest.raises(ProxyError, match="refused the credentials"):
        exchange(b"HTTP/1.1 407 No\r\n\r\n", Proxy("p", 1, "bob", "pw"))


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (("http://proxy", 3128), "host name or IP address alone"),
        (("", 3128), "host name or IP address alone"),
        (("proxy", "3128"), "port must be an int"),
        (("proxy", 0), "port must be an int"),
        (("proxy", True), "port must be an int"),
        (("proxy", 3128, None, "hunter2"), "password but no username"),
        (("proxy", 3128, b"bob", "hunter2"), "username must be a str"),
    ],
)
def test_a_proxy_built_by_hand_wrongly_is_refused_at_once(args: Any, what: str) -> None:
    with pytest.raises(ConfigError, match=what) as caught:
        Proxy(*args)
    assert "hunter2" not in str(caught.value)
    assert Proxy("::1", 3128, "bob", "").display == "http://***@[::1]:3128"
