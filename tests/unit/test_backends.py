"""Which library each step picks: the fastest installed, the standard one without extras.

A library is made "not installed" by putting None in sys.modules, which makes
its import raise ImportError exactly as a missing package does.
"""

from __future__ import annotations

import sys
import zlib

import pytest
import ujson

from gcluster import backends
from gcluster.backends import Backend, in_use, zlib_backend, zstd_backend
from gcluster.delivery import resolve_decoder
from gcluster.errors import ConfigError
from gcluster.inflate import ZlibStreamInflater

FAST_MODULES = ("orjson", "zlib_ng", "zlib_ng.zlib_ng")


def hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def test_without_the_fast_extra_the_standard_zlib_and_ujson(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hide(monkeypatch, *FAST_MODULES)
    used = in_use()
    assert used.zlib_stream == Backend("zlib", "python", zlib.ZLIB_RUNTIME_VERSION, zlib)
    assert used.zlib_stream.namespace is zlib
    assert used.json.module == "ujson" and used.json.namespace is ujson
    assert resolve_decoder("auto") is ujson.loads
    assert ZlibStreamInflater().backend.module == "zlib"
    assert used.to_dict()["json"] == f"ujson {ujson.__version__}"


@pytest.mark.extras  # the fast extra
def test_with_the_fast_extra_zlib_ng_and_orjson() -> None:
    import orjson
    from zlib_ng import zlib_ng

    used = in_use()
    assert (used.zlib_stream.module, used.zlib_stream.distribution) == (
        "zlib_ng.zlib_ng",
        "zlib-ng",
    )
    assert used.zlib_stream.namespace is zlib_ng
    assert (used.json.module, used.json.namespace) == ("orjson", orjson)
    assert str(used.json) == f"orjson {orjson.__version__}"
    assert resolve_decoder("auto") is orjson.loads
    # Named, each decoder is used whatever is installed beside it.
    assert resolve_decoder("ujson") is ujson.loads
    assert resolve_decoder("orjson") is orjson.loads
    assert ZlibStreamInflater().backend.module == "zlib_ng.zlib_ng"


def test_a_named_zlib_module_falls_back_to_the_standard_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hide(monkeypatch, *FAST_MODULES)
    assert zlib_backend("zlib_ng.zlib_ng").module == "zlib"
    assert zlib_backend("zlib").module == "zlib"


@pytest.mark.extras  # the zstd libraries of the test extra
def test_zstd_prefers_backports_zstd_to_zstandard(monkeypatch: pytest.MonkeyPatch) -> None:
    # On Python 3.14+, where backports.zstd does not install, as if it did not exist.
    hide(monkeypatch, "compression.zstd")
    if sys.version_info < (3, 14):
        chosen = zstd_backend()
        assert chosen is not None and chosen.module == "backports.zstd"
    hide(monkeypatch, "backports.zstd")
    chosen = zstd_backend()
    assert chosen is not None and chosen.module == "zstandard"
    assert zstd_backend("backports.zstd") is None  # named, and not installed


def test_the_standard_library_zstd_comes_first() -> None:
    # compression.zstd (3.14+) is the first choice wherever it exists.
    assert [name for name, _ in backends.ZSTD_MODULES] == [
        "compression.zstd",
        "backports.zstd",
        "zstandard",
    ]
    chosen = zstd_backend()
    if sys.version_info >= (3, 14):
        assert chosen is not None and chosen.module == "compression.zstd"
    else:
        assert chosen is None or chosen.module != "compression.zstd"


def test_no_zstd_library_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, *(name for name, _ in backends.ZSTD_MODULES))
    assert zstd_backend() is None
    assert in_use().zstd_stream is None
    assert in_use().to_dict()["zstd-stream"] is None


@pytest.mark.parametrize("pick", [zlib_backend, zstd_backend])
def test_an_unknown_module_name_is_refused(pick: object) -> None:
    with pytest.raises(ValueError, match="module must be one of .*, not 'lz4'"):
        pick("lz4")  # type: ignore[operator]


def test_an_unknown_decoder_name_lists_auto_first() -> None:
    with pytest.raises(ConfigError, match="^decoder must be one of auto, ujson, orjson or a"):
        resolve_decoder("simplejson")
