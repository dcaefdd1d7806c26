"""Run by test_hostile_memory.py in a process of its own: peak RSS under a hostile message.

A shard with max_message_size=LIMIT meets a gateway (tests/hostile.py) that,
after READY, sends either a decompression bomb ("bomb": a zlib-stream message
inflating to SIZE bytes) or a compressed message that never ends ("endless":
SIZE bytes with no sync-flush marker). Prints one JSON line: the process's
peak RSS just before the hostile message was sent and once the client's close
frame arrived, in KiB, and the close code.
"""

from __future__ import annotations

import json
import resource
import sys
import zlib

import gevent
from gevent.event import Event as Flag
from hostile import HostileGateway, Peer, frame

from gcluster.shard import Shard


def peak_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def main(mode: str, size: int, limit: int) -> None:
    result: dict[str, object] = {}
    done = Flag()
    chunk = b"\x00" * (1 << 20)

    def hostile(peer: Peer) -> None:
        peer.read_request()
        peer.accept()
        peer.hello(compress=True)
        peer.identify_or_resume()
        peer.ready(compress=True)
        deflate = peer._deflate
        pieces = []
        if mode == "bomb":
            pieces = [deflate.compress(chunk) for _ in range(size >> 20)]
            pieces.append(deflate.flush(zlib.Z_SYNC_FLUSH))
        result["before"] = peak_kib()
        if mode == "bomb":
            peer.write(frame(b"".join(pieces), 0x2))
        else:
            gevent.spawn(endless, peer)
        close = peer.read_close(timeout=60)
        result["after"] = peak_kib()
        result["close"] = close.close_code if close is not None else None
        done.set()

    def endless(peer: Peer) -> None:
        piece = frame(b"\x01" * 65536, 0x2)  # never a sync-flush marker
        try:
            for _ in range(size // 65536):
                peer.write(piece)
        except OSError:
            pass  # the client closed, as it should

    with HostileGateway(hostile) as gateway:
        shard = Shard(
            0,
            1,
            "hostile-token",
            1,
            gateway_url=gateway.url,
            compression=True,
            max_message_size=limit,
        )
        shard.start()
        done.wait(120)
        shard.down(timeout=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
