"""The two costs no client can skip, taken apart: inflating and JSON decoding.

On the payloads of the throughput benchmark's blasts (4 shards), one core, no
network: CPU per event to inflate zlib-stream with the standard library's
zlib and with zlib-ng (the ``zlib-ng`` package, zlib's API on a faster
implementation); to inflate zstd-stream with each zstd library installed
(``compression.zstd`` on Python 3.14+, ``backports.zstd``, ``zstandard``),
called bare and through gcluster's own ``ZstdStreamInflater`` (which bounds
each message: ``max_length`` for the first two, input fed in slices for
zstandard); and to decode the inflated JSON with ujson, orjson and the
standard library's json. ``gcluster.backends`` picks the fastest installed
of each in the order these figures gave; the ``fast`` extra installs zlib-ng
and orjson, the ``zstd`` extra backports.zstd.

    python benchmarks/decoders.py [--events 100000] [--repeat 5] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import ujson
from _common import pin_client, table, write_results
from throughput import decode_limit, zstd_decompressor

from gcluster import backends
from gcluster.inflate import ZlibStreamInflater, ZstdStreamInflater

SHARDS = 4  # the payloads of throughput.py's 4-shard blasts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="20,000 events, best of 2")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeat = 20_000, 2
    pin_client()
    shard_ids = range(SHARDS)
    per_shard = args.events // SHARDS

    # (step, library): a factory of one connection's decompress function.
    inflaters: dict[tuple[str, str], Callable[[], Callable[[bytes], Any]]] = {
        ("zlib-stream", "zlib"): lambda: zlib.decompressobj().decompress,
    }
    decoders: dict[str, Callable[[bytes], Any]] = {"ujson": ujson.loads, "json": json.loads}
    missing = []
    zlib_ng = _optional("zlib_ng.zlib_ng")
    if zlib_ng is not None:
        inflaters["zlib-stream", "zlib-ng"] = lambda: zlib_ng.decompressobj().decompress
    else:
        missing.append("zlib-ng")
    for name in ("zlib", "zlib_ng.zlib_ng"):
        backend = backends.zlib_backend(name)
        if backend.module == name:
            inflaters["zlib-stream", f"{name} (gcluster's inflater)"] = _inflater(
                ZlibStreamInflater, backend
            )
    for name, _ in backends.ZSTD_MODULES:
        zstd = backends.zstd_backend(name)
        if zstd is None:
            missing.append(name)
            continue
        inflaters["zstd-stream", name] = zstd_decompressor(zstd)
        inflaters["zstd-stream", f"{name} (gcluster's inflater)"] = _inflater(
            ZstdStreamInflater, zstd
        )
    orjson = _optional("orjson")
    if orjson is not None:
        decoders["orjson"] = orjson.loads
    else:
        missing.append("orjson")

    rows = []
    for (compression, name), make in inflaters.items():
        limit = decode_limit(
            compression, shard_ids, per_shard, args.repeat, loads=None, decompressor=make
        )
        rows.append((f"inflate {compression}", name, limit["cpu_us_per_event"]))
    for name, loads in decoders.items():
        limit = decode_limit(False, shard_ids, per_shard, args.repeat, loads=loads)
        rows.append(("decode JSON", name, limit["cpu_us_per_event"]))
    events = per_shard * SHARDS

    print(table(["step", "library", "us CPU/event"], rows))
    if missing:
        print(f"not installed, not measured: {', '.join(missing)}")
    path = write_results(
        "decoders",
        {
            "settings": {"events": events, "repeat": args.repeat, "shards": SHARDS},
            "us_per_event": {f"{step} {name}": us for step, name, us in rows},
            "not_installed": missing,
            "in_use": backends.in_use().to_dict(),
        },
    )
    print(f"\nwrote {path}")
    return 0


def _inflater(kind: Any, backend: backends.Backend) -> Callable[[], Callable[[bytes], Any]]:
    return lambda: kind(backend=backend).feed


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
