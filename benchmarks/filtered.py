"""What an event filtered out by ``event_types`` costs, against one delivered.

The same blast of MESSAGE_CREATEs goes to a cluster that delivers them and to
one whose ``event_types`` has no dispatch type at all but TYPING_START (one
TYPING_START per shard after the blast tells when it is through). The client's
CPU time per event is the cost; wall time per event is shown too. Filtered
events are dropped after decompression but before JSON decoding, so the
ratio is lower without transport compression. The table also shows
decompressing the same payloads alone (one core, no network): under
zlib-stream no filter can cost less than that, and its share of a delivered
event is the floor of the ratio.

    python benchmarks/filtered.py [--events 100000] [--repeat 3] [--shards 4]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import _common
from _common import make_cluster, pin_client, start_simulator, table, write_results
from _stream import Run, blast_run, median_run
from throughput import decode_limit

from gcluster import EventTypeFlags

# The most a filtered event may cost against a delivered one, per compression:
# under zlib-stream every message must still be inflated.
TARGETS = {"zlib-stream": 0.5, "none": 0.3}
# Every dispatch type filtered out; TYPING_START only marks the end of a run.
NO_DISPATCHES = (
    EventTypeFlags.SHARD_LIFECYCLE | EventTypeFlags.GATEWAY_LIFECYCLE | EventTypeFlags.TYPING_START
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="30,000 events, one run each")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeat = 30_000, 1
    pin_client()
    shard_ids = range(args.shards)
    per_shard = args.events // args.shards
    results: list[dict[str, Any]] = []
    with start_simulator(shards=args.shards, max_concurrency=args.shards) as sim:
        for compression in ("zlib-stream", False):
            name = _common.compression_name(compression)
            measured: dict[str, Run] = {}
            for mode, types in (("delivered", EventTypeFlags.ALL), ("filtered", NO_DISPATCHES)):
                cluster = make_cluster(
                    sim, shard_ids, args.shards, compression=compression, event_types=types
                )
                try:
                    runs = [
                        blast_run(sim, cluster, shard_ids, per_shard, filtered=mode == "filtered")
                        for _ in range(args.repeat)
                    ]
                finally:
                    cluster.down()
                measured[mode] = run = median_run(runs)
                print(
                    f"  {name:<12} {mode:<9} {run.rate:>9,.0f} events/s "
                    f"{run.client_cpu_per_event * 1e6:6.2f} us CPU/event",
                    flush=True,
                )
            delivered, filtered = measured["delivered"], measured["filtered"]
            # The floor under any filter: decompressing the same payloads
            # alone, one core, no network (throughput.py's limit, undecoded).
            inflate = decode_limit(
                compression, shard_ids, min(per_shard, 25_000), total=args.shards, loads=None
            )
            inflate_us = inflate["cpu_us_per_event"]
            delivered_us = delivered.client_cpu_per_event * 1e6
            results.append(
                {
                    "compression": name,
                    "delivered": delivered.to_dict(),
                    "filtered": filtered.to_dict(),
                    "cpu_ratio": filtered.client_cpu_per_event / delivered.client_cpu_per_event,
                    "wall_ratio": delivered.rate / filtered.rate,
                    "decompress_only_us": inflate_us,
                    "floor_ratio": inflate_us / delivered_us,
                }
            )

    print()
    print(
        table(
            [
                "compression",
                "delivered/s",
                "filtered/s",
                "delivered us",
                "filtered us",
                "ratio (CPU)",
                "ratio (wall)",
                "decompress us",
                "floor ratio",
            ],
            [
                (
                    r["compression"],
                    r["delivered"]["rate"],
                    r["filtered"]["rate"],
                    r["delivered"]["client_cpu_per_event_us"],
                    r["filtered"]["client_cpu_per_event_us"],
                    f"{r['cpu_ratio']:.2f}x",
                    f"{r['wall_ratio']:.2f}x",
                    r["decompress_only_us"],
                    f"{r['floor_ratio']:.2f}x",
                )
                for r in results
            ],
        )
    )
    targets = {}
    for r in results:
        target = TARGETS.get(r["compression"])
        if target is None:
            continue
        met = r["cpu_ratio"] <= target
        targets[f"filtered_vs_delivered_{r['compression']}"] = {
            "value": r["cpu_ratio"],
            "target": target,
            "met": met,
        }
        print(
            f"target: a filtered event <= {target}x a delivered one ({r['compression']}): "
            f"{r['cpu_ratio']:.2f}x ({'met' if met else 'MISSED'})"
        )
    path = write_results(
        "filtered",
        {
            "settings": {"events": args.events, "repeat": args.repeat, "shards": args.shards},
            "results": results,
            "targets": targets,
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
