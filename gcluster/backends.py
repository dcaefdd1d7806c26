"""Which library does each step of the receive path: inflating and JSON decoding.

gcluster's default install is pure Python on top of gevent: the standard
library's ``zlib`` inflates zlib-stream and ujson decodes. Faster libraries
are picked up when they are installed, with no option to set:

- zlib-stream: zlib-ng's drop-in ``zlib_ng.zlib_ng`` (the ``fast`` extra),
  else the standard library's ``zlib``;
- JSON (the default ``decoder="auto"``): orjson (the ``fast`` extra), else
  ujson;
- zstd-stream: the standard library's ``compression.zstd`` (Python 3.14+),
  else ``backports.zstd`` (the same API for older Pythons; the ``zstd``
  extra), else ``zstandard`` (what the ``zstd`` extra installed before).

The order is what ``benchmarks/decoders.py`` measured fastest, not a guess.
Each choice is made when a connection or cluster starts, by trying the
imports in order (a look-up in ``sys.modules`` once imported), so a test can
hide a library by putting None in ``sys.modules``. `in_use()` says what was
picked; ``python -m gcluster --version`` prints it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import zlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Final

__all__ = [
    "JSON_DECODERS",
    "ZLIB_MODULES",
    "ZSTD_MODULES",
    "Backend",
    "InUse",
    "in_use",
    "json_backend",
    "zlib_backend",
    "zstd_backend",
]


@dataclass(frozen=True, slots=True)
class Backend:
    """One library chosen for one step.

    Attributes:
        module: the module imported (``zlib_ng.zlib_ng``, ``orjson``, ...).
        distribution: the package that installs it, or ``"python"`` for the
            standard library.
        version: the library's version (for the standard library's zlib and
            zstd, the C library's).
    """

    module: str
    distribution: str
    version: str
    namespace: ModuleType = field(repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.module} {self.version}"


# (module, distribution) in order of preference: the fastest first.
ZLIB_MODULES: Final = (("zlib_ng.zlib_ng", "zlib-ng"), ("zlib", "python"))
JSON_DECODERS: Final = (("orjson", "orjson"), ("ujson", "ujson"))
ZSTD_MODULES: Final = (
    ("compression.zstd", "python"),
    ("backports.zstd", "backports.zstd"),
    ("zstandard", "zstandard"),
)


def zlib_backend(module: str | None = None) -> Backend:
    """The zlib implementation zlib-stream is inflated with: zlib-ng when installed.

    Args:
        module: one of `ZLIB_MODULES`' names to use that one (the standard
            library's when it is not installed); None picks the first installed.

    Raises:
        ValueError: `module` is not one of `ZLIB_MODULES`.
    """
    backend = _pick(ZLIB_MODULES, module, "zlib")
    return backend if backend is not None else _backend("zlib", "python", zlib)


def json_backend() -> Backend:
    """The library `decoder="auto"` decodes with: orjson when installed, else ujson."""
    backend = _first(JSON_DECODERS)
    if backend is None:  # pragma: no cover - ujson is a dependency
        raise ImportError("neither orjson nor ujson is installed")
    return backend


def zstd_backend(module: str | None = None) -> Backend | None:
    """The library zstd-stream is inflated with, or None when none is installed.

    Args:
        module: one of `ZSTD_MODULES`' names to use that one only (None when
            it is not installed); None picks the first installed.

    Raises:
        ValueError: `module` is not one of `ZSTD_MODULES`.
    """
    return _pick(ZSTD_MODULES, module, "zstd")


@dataclass(frozen=True, slots=True)
class InUse:
    """The library each step uses in this process (`in_use()`).

    Attributes:
        json: what `decoder="auto"` decodes dispatches with.
        zlib_stream: what zlib-stream is inflated with.
        zstd_stream: what zstd-stream is inflated with; None when no zstd
            library is installed (zstd-stream is then refused).
    """

    json: Backend
    zlib_stream: Backend
    zstd_stream: Backend | None

    def to_dict(self) -> dict[str, str | None]:
        """Each step's library as ``"module version"`` (None: not installed)."""
        return {
            "json": str(self.json),
            "zlib-stream": str(self.zlib_stream),
            "zstd-stream": str(self.zstd_stream) if self.zstd_stream is not None else None,
        }


def in_use() -> InUse:
    """What each step uses in this process now."""
    return InUse(json=json_backend(), zlib_stream=zlib_backend(), zstd_stream=zstd_backend())


def _pick(candidates: tuple[tuple[str, str], ...], module: str | None, what: str) -> Backend | None:
    if module is None:
        return _first(candidates)
    for candidate in candidates:
        if candidate[0] == module:
            return _first((candidate,))
    names = ", ".join(name for name, _ in candidates)
    raise ValueError(f"{what} module must be one of {names}, not {module!r}")


def _first(candidates: tuple[tuple[str, str], ...]) -> Backend | None:
    for name, distribution in candidates:
        try:
            namespace = importlib.import_module(name)
        except ImportError:
            continue
        return _backend(name, distribution, namespace)
    return None


def _backend(name: str, distribution: str, namespace: ModuleType) -> Backend:
    return Backend(name, distribution, _version(name, distribution, namespace), namespace)


def _version(name: str, distribution: str, namespace: ModuleType) -> str:
    if name == "zlib":
        return str(namespace.ZLIB_RUNTIME_VERSION)
    if distribution == "python":  # compression.zstd: the zstd library it was built with
        return str(namespace.zstd_version)
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:  # e.g. run from a source tree
        return str(getattr(namespace, "__version__", "unknown"))
