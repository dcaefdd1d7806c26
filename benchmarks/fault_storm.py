"""The long fault storm: 8 shards, 56,000 numbered events, resumable faults every ~300 events.

    python benchmarks/fault_storm.py [--events-per-shard 7000] [--fault-every 300] [--seed 1]

Prints a table and writes benchmarks/results/fault_storm.json. The verdict is
strict: zero events lost, zero duplicated, zero out of order.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from _common import RESULTS  # also puts the checkout on sys.path

from gcluster.testing.storm import run_storm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--events-per-shard", type=int, default=7000)
    parser.add_argument("--fault-every", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    result = run_storm(
        shards=args.shards,
        events_per_shard=args.events_per_shard,
        fault_every=args.fault_every,
        seed=args.seed,
        timeout=600,
    )
    lost = sum(len(v) for v in result.lost.values())
    duplicated = sum(len(v) for v in result.duplicated.values())
    out_of_order = sum(result.out_of_order.values())
    rows = [
        ("shards", result.shards),
        ("events", result.shards * result.events_per_shard),
        ("faults injected", result.faults),
        ("faults on a live link", result.struck),
        ("resumes", result.resumes),
        ("identifies", result.identifies),
        ("events lost", lost),
        ("events duplicated", duplicated),
        ("events out of order", out_of_order),
        ("seconds", round(result.seconds, 1)),
    ]
    for name, value in rows:
        print(f"{name:<22}{value:>10}")
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "fault_storm.json"), "w", encoding="utf-8") as out:
        json.dump(dict(rows) | {"seed": args.seed, "fault_every": args.fault_every}, out, indent=2)
    return 0 if result.exactly_once else 1


if __name__ == "__main__":
    sys.exit(main())
