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
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import ujson
from _common import pin_client, table, write_results
from throughput import frames_for

from gcluster.testing import wire

SHARDS = 4
TOTAL = 16  # as in throughput.py, so the payloads are the same


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="20,000 events, best of 2")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeat = 20_000, 2
    pin_client()
    per_shard = args.events // SHARDS
    plain = [frames_for(shard_id, TOTAL, per_shard) for shard_id in range(SHARDS)]
    compressed = []
    for frames in plain:
        compress = wire.compressor_for(wire.ZLIB_STREAM)
        assert compress is not None
        compressed.append([compress(frame) for frame in frames])
    events = sum(len(frames) for frames in plain)

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

        def inflate(make: Callable[[], Any] = make) -> None:
            for stream in compressed:
                decompress = make().decompress
                for message in stream:
                    decompress(message)

        rows.append(("inflate", name, _cpu_per_event(inflate, events, args.repeat)))
    for name, loads in decoders.items():

        def decode(loads: Callable[[bytes], Any] = loads) -> None:
            for frames in plain:
                for message in frames:
                    loads(message)

        rows.append(("decode", name, _cpu_per_event(decode, events, args.repeat)))

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


def _cpu_per_event(work: Callable[[], None], events: int, repeat: int) -> float:
    """The best of ``repeat`` runs, in µs of CPU per event."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best / events * 1e6


if __name__ == "__main__":
    sys.exit(main())
