"""Events per second through ``cluster.events()``, against what decoding alone allows.

For 1, 4 and 16 shards and each transport compression (zlib-stream, none,
zstd-stream), the simulator (in its own process, on the other core) blasts
pre-encoded ~1.2 KB MESSAGE_CREATEs and the client's rate is timed from the
first byte written to the last event yielded. In the same run:

- the decode-only limit: decompression + JSON decoding of the same
  payloads with the libraries gcluster picks (zlib-ng and orjson with the
  ``fast`` extra, zlib and ujson without), on one core, with no network,
  framing, protocol or queue;
- the simulator's own send rate into a reader that discards the bytes, and
  its CPU use during each client run, to show it is not the bottleneck;
- bytes on the wire per event for each compression.

    python benchmarks/throughput.py [--events 100000] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import _common
import gevent
import gevent.socket
import websocket
from _common import INTENTS, make_cluster, pin_client, start_simulator, table, write_results
from _stream import Run, blast_run, median_run

from gcluster import backends
from gcluster.frames import DEFAULT_MAX_MESSAGE
from gcluster.testing import SimulatorProcess, traffic, wire

TOTAL = 16  # the simulator's shard count; clusters run the first 1, 4 or 16
SHARD_COUNTS = (1, 4, 16)
COMPRESSIONS: tuple[bool | str, ...] = ("zlib-stream", False, "zstd-stream")


def frames_for(shard_id: int, total: int, count: int) -> list[bytes]:
    """The dispatches the simulator's first blast to the shard sends, as JSON bytes."""
    pool = traffic.BodyPool(traffic.VariedStream(shard_id, total))
    frames = []
    for index, (name, body) in enumerate(pool.take(traffic.BLAST_KINDS, count)):
        # READY was s=1; numbers start at 1: exactly the gateway's layout.
        text = f'{{"t":"{name}","s":{index + 2},"op":0,"d":{body},"gcluster_n":{index + 1}}}}}'
        frames.append(text.encode())
    return frames


def decode_limit(
    compression: bool | str,
    shard_ids: Sequence[int],
    per_shard: int,
    repeat: int = 3,
    *,
    total: int = TOTAL,
    loads: Callable[[bytes], Any] | None | Literal["gcluster"] = "gcluster",
    decompressor: Callable[[], Callable[[bytes], Any]] | None = None,
) -> dict[str, Any]:
    """Decompress + JSON-decode the blast's payloads: one core, nothing else.

    The libraries are the ones gcluster uses in this process
    (``gcluster.backends``: zlib-ng and orjson with the ``fast`` extra, the
    standard library's zlib and ujson without it), called bare. ``loads``
    may be another decoder, or None for decompression alone: what even a
    filtered-out event costs, since a compressed stream must be inflated
    message by message to find where the next one starts. ``decompressor``
    makes one connection's decompress function instead of the library's
    (e.g. ``decoders.py``'s for each zstd library).
    """
    name = _common.compression_name(compression)
    streams = []
    for shard_id in shard_ids:
        frames = frames_for(shard_id, total, per_shard)
        compress = wire.compressor_for(name if name != "none" else None)
        streams.append([compress(f) for f in frames] if compress is not None else frames)
    events = sum(len(s) for s in streams)
    decode = backends.json_backend().namespace.loads if loads == "gcluster" else loads
    timings, cpu_timings = [], []
    for _ in range(repeat):
        make = decompressor if decompressor is not None else _decompressor(name)
        decompressors = [make() if make is not None else None for _ in streams]
        if decode is None:
            decode = _ignore
        cpu_started = time.process_time()
        started = time.perf_counter()
        for stream, decompress in zip(streams, decompressors, strict=True):
            if decompress is None:
                for message in stream:
                    decode(message)
            else:
                for message in stream:
                    decode(decompress(message))
        timings.append(time.perf_counter() - started)
        cpu_timings.append(time.process_time() - cpu_started)
    seconds, cpu = min(timings), min(cpu_timings)
    return {
        "compression": name,
        "events": events,
        "seconds": seconds,
        "rate": events / seconds,
        "cpu_rate": events / cpu,
        "us_per_event": seconds / events * 1e6,
        "cpu_us_per_event": cpu / events * 1e6,
        "wire_bytes_per_event": sum(len(m) for s in streams for m in s) / events,
    }


def _ignore(message: bytes) -> None:
    return None


def _decompressor(name: str) -> Callable[[], Callable[[bytes], bytes]] | None:
    """One connection's bare decompress function, from the library gcluster picks."""
    if name == "zlib-stream":
        zlib_module = backends.zlib_backend().namespace
        return lambda: zlib_module.decompressobj().decompress
    if name == "zstd-stream":
        backend = backends.zstd_backend()
        if backend is None:
            raise RuntimeError("no zstd library installed: pip install 'gcluster[zstd]'")
        return zstd_decompressor(backend)
    return None


def zstd_decompressor(backend: backends.Backend) -> Callable[[], Callable[[bytes], bytes]]:
    """A factory of bare decompress functions of one zstd library, as gcluster calls it."""
    zstd = backend.namespace
    if backend.module == "zstandard":
        return lambda: zstd.ZstdDecompressor().decompressobj().decompress
    # compression.zstd and backports.zstd: bounded by max_length, as the inflater does.
    limit = DEFAULT_MAX_MESSAGE + 1

    def make() -> Callable[[bytes], bytes]:
        decompress = zstd.ZstdDecompressor().decompress
        return lambda data: decompress(data, limit)

    return make


def simulator_ceiling(
    sim: SimulatorProcess, shard_ids: Sequence[int], per_shard: int
) -> dict[str, Any]:
    """The simulator's send rate into sockets whose reader only counts bytes.

    Uncompressed, the hardest case for the simulator (4.5x the bytes of
    zlib-stream per event), and big enough (about 1.3 KB x events) that the
    sockets' buffers hold only a small part of it.
    """
    socks = {shard_id: _raw_gateway_socket(sim, shard_id) for shard_id in shard_ids}
    if not sim.wait_connected(shard_ids):
        raise RuntimeError("raw clients did not get their sessions")
    before = {t["shard_id"]: t["wire_bytes"] for t in sim.traffic() if t["shard_id"] in socks}
    queued = sim.blast(shard_ids, per_shard, hold=True)
    expected = {q["shard_id"]: before[q["shard_id"]] + q["wire_bytes"] for q in queued}
    sim_before = sim.stats()
    drains = [
        gevent.spawn(_drain, sock, already, expected[shard_id])
        for shard_id, (sock, already) in socks.items()
    ]
    sim.release()
    gevent.joinall(drains, raise_error=True)
    records = sim.wait_blasts()
    sim_after = sim.stats()
    for sock, _ in socks.values():
        sock.close()
    started = min(r["started"] for r in records)
    finished = max(r["finished"] for r in records)
    events = sum(r["written"] for r in records)
    wire_bytes = sum(q["wire_bytes"] for q in queued)
    return {
        "compression": "none",
        "shards": len(shard_ids),
        "events": events,
        "seconds": finished - started,
        "rate": events / (finished - started),
        "bytes_per_second": wire_bytes / (finished - started),
        "sim_cpu_seconds": sim_after["cpu_seconds"] - sim_before["cpu_seconds"],
        "wire_bytes": wire_bytes,
    }


def _raw_gateway_socket(sim: SimulatorProcess, shard_id: int) -> tuple[Any, int]:
    """A gateway connection by hand: handshake and IDENTIFY, then only raw reads."""
    sock = gevent.socket.create_connection(("127.0.0.1", sim.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /?v=10&encoding=json HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{sim.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the simulator closed during the handshake")
        received += chunk
    head, rest = received.split(b"\r\n\r\n", 1)
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"handshake refused: {head[:80]!r}")
    identify = json.dumps(
        {
            "op": 2,
            "d": {
                "token": f"Bot {sim.token}",
                "intents": int(INTENTS),
                "properties": {"os": "linux", "browser": "drain", "device": "drain"},
                "shard": [shard_id, TOTAL],
            },
        }
    )
    sock.sendall(websocket.ABNF.create_frame(identify, websocket.ABNF.OPCODE_TEXT).format())
    return sock, len(rest)


def _drain(sock: Any, already: int, expected: int) -> None:
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    received = already
    while received < expected:
        count = sock.recv_into(view)
        if not count:
            raise RuntimeError("the simulator closed during the drain")
        received += count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per run, all shards")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (median)")
    parser.add_argument("--shards", default=",".join(map(str, SHARD_COUNTS)))
    parser.add_argument(
        "--compressions", default=",".join(_common.compression_name(c) for c in COMPRESSIONS)
    )
    parser.add_argument("--quick", action="store_true", help="30,000 events, one run each")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeat = 30_000, 1
    shard_counts = [int(s) for s in args.shards.split(",")]
    compressions: list[bool | str] = [
        False if c == "none" else c for c in args.compressions.split(",")
    ]
    pin_client()
    _common.raise_file_limit()

    # The 4-shard figures are the headline; the decode limit uses their payloads.
    limit_shards = list(range(min(4, TOTAL)))
    limits = {}
    for compression in compressions:
        per_shard = min(args.events // len(limit_shards), 25_000)
        limit = decode_limit(compression, limit_shards, per_shard)
        limits[limit["compression"]] = limit
        print(
            f"decode-only {limit['compression']:<12} {limit['rate']:>10,.0f} events/s"
            f"  ({limit['us_per_event']:.2f} us/event)",
            flush=True,
        )

    results: list[dict[str, Any]] = []
    with start_simulator(shards=TOTAL, max_concurrency=TOTAL, replay_limit=10_000) as sim:
        ceiling = simulator_ceiling(sim, limit_shards, max(25_000, args.events // 4))
        print(
            f"simulator alone (uncompressed, {ceiling['shards']} sockets, reader discards): "
            f"{ceiling['rate']:,.0f} events/s, {ceiling['bytes_per_second'] / 1e6:,.0f} MB/s",
            flush=True,
        )
        for compression in compressions:
            name = _common.compression_name(compression)
            for count in shard_counts:
                cluster = make_cluster(sim, range(count), TOTAL, compression=compression)
                try:
                    runs: list[Run] = []
                    for _ in range(args.repeat):
                        runs.append(blast_run(sim, cluster, range(count), args.events // count))
                        print(
                            f"  {name:<12} {count:>2} shards: {runs[-1].rate:>9,.0f} events/s",
                            flush=True,
                        )
                finally:
                    cluster.down()
                run = median_run(runs)
                results.append(
                    {
                        "compression": name,
                        **run.to_dict(),
                        "runs": [r.rate for r in runs],
                        "vs_decode_limit": run.rate / limits[name]["rate"],
                        "vs_decode_limit_cpu": run.cpu_rate / limits[name]["cpu_rate"],
                    }
                )

    rows = [
        (
            r["compression"],
            r["shards"],
            r["rate"],
            r["cpu_rate"],
            f"{r['vs_decode_limit']:.2f}x",
            f"{r['vs_decode_limit_cpu']:.2f}x",
            r["client_cpu_per_event_us"],
            f"{r['client_cpu_share']:.0%}",
            r["wire_bytes_per_event"],
            f"{r['sim_cpu_share']:.1%}",
            r["sim_capacity"],
        )
        for r in results
    ]
    print()
    print(
        table(
            [
                "compression",
                "shards",
                "events/s",
                "per CPU-s",
                "vs decode",
                "(CPU)",
                "client us/ev",
                "client CPU",
                "wire B/ev",
                "sim CPU",
                "sim capacity/s",
            ],
            rows,
        )
    )
    print()
    print(
        table(
            ["decode-only limit", "events/s", "per CPU-s", "us/event", "wire B/event"],
            [
                (
                    name,
                    lim["rate"],
                    lim["cpu_rate"],
                    lim["us_per_event"],
                    lim["wire_bytes_per_event"],
                )
                for name, lim in limits.items()
            ],
        )
    )
    print(
        f"\nsimulator alone: {ceiling['rate']:,.0f} uncompressed events/s "
        f"({ceiling['bytes_per_second'] / 1e6:,.0f} MB/s) into sockets that discard; "
        "sim CPU and capacity above: its CPU use while the client ran, and the events/s "
        "that CPU cost allows"
    )
    headline = next(
        (r for r in results if r["compression"] == "zlib-stream" and r["shards"] == 4), None
    )
    targets = {}
    if headline is not None:
        for key, basis in (("vs_decode_limit", "wall"), ("vs_decode_limit_cpu", "CPU")):
            ratio = headline[key]
            targets[f"zlib_4_shards_{key}"] = {"value": ratio, "target": 0.5, "met": ratio >= 0.5}
            print(
                f"target: 4 shards zlib-stream >= 0.5x decode-only limit ({basis} time): "
                f"{ratio:.2f}x ({'met' if ratio >= 0.5 else 'MISSED'})"
            )
    path = write_results(
        "throughput",
        {
            "settings": {
                "events": args.events,
                "repeat": args.repeat,
                "simulator_shards": TOTAL,
                "payload": "MESSAGE_CREATE, gcluster.testing.traffic (about 1.27 KB)",
            },
            "runs": results,
            "decode_limit": limits,
            "simulator_ceiling": ceiling,
            "targets": targets,
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
