"""Draw throughput per shard count against the decode-only limit and discord.py.

Reads ``benchmarks/results/throughput.json`` (and ``peers.json`` when there
is one) and writes ``benchmarks/results/throughput.png``. Needs matplotlib,
which lives in the benchmarks' virtualenv, not in gcluster's dependencies:

    benchmarks/.venv-bench/bin/python benchmarks/plot.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COLORS = {"zlib-stream": "#1f77b4", "none": "#7f7f7f", "zstd-stream": "#2ca02c"}


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def main() -> int:
    throughput = load("throughput")
    if throughput is None:
        print("no results/throughput.json: run benchmarks/throughput.py first", file=sys.stderr)
        return 2
    peers = load("peers")
    runs = throughput["runs"]
    compressions = list(dict.fromkeys(r["compression"] for r in runs))
    shard_counts = sorted({r["shards"] for r in runs})
    figure, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=False)
    width = 0.8 / len(compressions)
    for ax, key, title in (
        (axes[0], "rate", "events/s (wall clock)"),
        (axes[1], "cpu_rate", "events per second of client CPU"),
    ):
        for index, compression in enumerate(compressions):
            by_shards = {r["shards"]: r for r in runs if r["compression"] == compression}
            xs = [
                i + (index - (len(compressions) - 1) / 2) * width for i in range(len(shard_counts))
            ]
            ys = [by_shards[s][key] if s in by_shards else 0 for s in shard_counts]
            ax.bar(xs, ys, width, label=f"gcluster, {compression}", color=COLORS.get(compression))
            limit = throughput["decode_limit"].get(compression)
            if limit is not None:
                ax.axhline(
                    limit[key],
                    linestyle="--",
                    linewidth=1,
                    color=COLORS.get(compression),
                    label=f"decode-only limit, {compression}",
                )
        if peers is not None:
            position = shard_counts.index(4) if 4 in shard_counts else 0
            theirs = peers["discord_py"][key]
            ax.plot(
                [position],
                [theirs],
                marker="D",
                markersize=9,
                color="#d62728",
                linestyle="none",
                label=f"discord.py {peers['discord_py'].get('version', '')}, zlib-stream",
            )
        ax.set_xticks(range(len(shard_counts)), [f"{s} shards" for s in shard_counts])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("events per second")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    environment = throughput.get("environment", {})
    figure.suptitle(
        "gcluster: MESSAGE_CREATE (~1.27 KB) through cluster.events(), simulator on its own core"
        f"\n{environment.get('python', '')} · gevent {environment.get('gevent', '')} · "
        f"git {environment.get('git', '')} · load {environment.get('loadavg', [0.0])[0]:.2f}",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    out = RESULTS / "throughput.png"
    figure.savefig(out, dpi=120)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
