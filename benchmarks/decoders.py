"""The two costs no client can skip, taken apart: inflating and JSON decoding.

On the payloads of the throughput benchmark's blasts (4 shards, zlib-stream),
one core, no network: CPU per event to inflate with the standard library's
zlib and, when installed, with zlib-ng (the ``zlib-ng`` package, zlib's API on
a faster implementation), and to decode the inflated JSON with ujson and,
when installed, orjson. gcluster uses zlib and ujson by default (orjson with
``decoder="orjson"``); the others show what a faster library would save on
every event, delivered or filtered.

    python benchmarks/decoders.py [--events 100000] [--repeat 5] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import ujson
from _common import pin_client, table, write_results
from throughput import decode_limit

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

    inflaters: dict[str, Callable[[], Any]] = {"zlib": zlib.decompressobj}
    decoders: dict[str, Callable[[bytes], Any]] = {"ujson": ujson.loads}
    missing = []
    zlib_ng = _optional("zlib_ng.zlib_ng")
    if zlib_ng is not None:
        inflaters["zlib-ng"] = zlib_ng.decompressobj
    else:
        missing.append("zlib-ng")
    orjson = _optional("orjson")
    if orjson is not None:
        decoders["orjson"] = orjson.loads
    else:
        missing.append("orjson")

    rows = []
    for name, make in inflaters.items():
        limit = decode_limit(
            "zlib-stream", shard_ids, per_shard, args.repeat, loads=None, decompressobj=make
        )
        rows.append(("inflate", name, limit["cpu_us_per_event"]))
    for name, loads in decoders.items():
        limit = decode_limit(False, shard_ids, per_shard, args.repeat, loads=loads)
        rows.append(("decode", name, limit["cpu_us_per_event"]))
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
        },
    )
    print(f"\nwrote {path}")
    return 0


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
