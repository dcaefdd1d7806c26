"""Blasts: many varied dispatches, pre-encoded and queued on one connection at once.

Benchmarks need a simulator that is never what limits the client:
`GatewaySimulator.blast` and `send_paced` build, encode, compress and frame a
whole run of dispatches before the writer starts, and the writer hands it to
the socket in large chunks (`wire.BlastFrames`). The dispatches still take
the session's sequence numbers and go into its replay log, as any other
(the bookkeeping is `gateway`'s), so a client that drops during a blast
resumes and gets the rest. A `Blast` is what a test waits on for its
`BlastRecord`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import gevent

from gcluster.errors import ConfigError

from . import payloads, traffic
from .records import BlastRecord, Records
from .wire import BlastFrames

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = ["Blast", "queue_blast"]

_NUMBER = payloads.NUMBER_KEY
_DUE = payloads.DUE_KEY


class Blast:
    """Dispatches blasted to one connection (`queue_blast`): wait for its record.

    Attributes:
        shard_id, connection_id, session_id: where they went.
        first_s, last_s: their sequence numbers.
        first_number, last_number: their event numbers.
        prepare_seconds: building, encoding, compressing and framing them.
        frames: the queued frames, as the connection's writer sees them.
    """

    __slots__ = (
        "connection_id",
        "first_number",
        "first_s",
        "frames",
        "last_number",
        "last_s",
        "prepare_seconds",
        "record",
        "session_id",
        "shard_id",
    )

    def __init__(
        self,
        *,
        shard_id: int,
        connection_id: int,
        session_id: str,
        first_s: int,
        last_s: int,
        first_number: int,
        last_number: int,
        prepare_seconds: float,
        frames: BlastFrames,
        records: Records,
    ) -> None:
        self.shard_id = shard_id
        self.connection_id = connection_id
        self.session_id = session_id
        self.first_s = first_s
        self.last_s = last_s
        self.first_number = first_number
        self.last_number = last_number
        self.prepare_seconds = prepare_seconds
        self.frames = frames
        self.record: BlastRecord | None = None

        def finished(_: object) -> None:
            self.record = record = self._to_record()
            records.blasts.append(record)
            records.notify()

        frames.done.rawlink(finished)

    def __repr__(self) -> str:
        return f"<Blast shard={self.shard_id} s={self.first_s}..{self.last_s} done={self.done}>"

    @property
    def events(self) -> int:
        return self.last_s - self.first_s + 1

    @property
    def done(self) -> bool:
        """Whether the writer is through with it (all written, or the connection ended)."""
        return self.record is not None

    def release(self, start_at: float | None = None) -> None:
        """Start a held or paced blast; a paced one sends each dispatch at
        ``start_at`` (default now) plus its due time."""
        self.frames.release(time.monotonic() if start_at is None else start_at)

    def wait(self, timeout: float | None = None) -> BlastRecord | None:
        """Wait until the writer is through with it; its record, or None on timeout."""
        if self.frames.done.wait(timeout) and self.record is None:
            # rawlink callbacks run on the hub's next turn: let it record.
            gevent.sleep(0)
        return self.record

    def _to_record(self) -> BlastRecord:
        frames = self.frames
        return BlastRecord(
            time=time.monotonic(),
            shard_id=self.shard_id,
            connection_id=self.connection_id,
            session_id=self.session_id,
            first_s=self.first_s,
            last_s=self.last_s,
            first_number=self.first_number,
            last_number=self.last_number,
            events=self.events,
            written=frames.written,
            payload_bytes=sum(frames.payload_bytes),
            wire_bytes=frames.wire_bytes,
            prepare_seconds=self.prepare_seconds,
            started=frames.started,
            finished=frames.finished if frames.finished is not None else time.monotonic(),
            late_max=frames.late_max,
            sent_at=tuple(frames.sent_at),
        )


def queue_blast(
    gateway: Gateway,
    shard_id: int,
    count: int,
    kinds: tuple[str, ...],
    *,
    due: list[float] | None = None,
    hold: bool = False,
) -> Blast:
    """Queue ``count`` varied dispatches on the shard's live connection, pre-encoded.

    Each takes the session's next ``s`` and the shard's next event number
    and is logged for replay, as `Gateway.deliver` does, so a RESUME after a blast
    (or during one) replays what the client missed. Everything is built,
    encoded, compressed and framed here, before the writer starts, and
    without yielding, so nothing else can slip into the compression
    stream in between.

    Args:
        due: pace the dispatches (see `WebSocket.send_blast`): one time
            per dispatch, in seconds after the start given to
            `Blast.release`, also written into its ``d`` (see
            `payloads.due_offset`).
        hold: write nothing until `Blast.release` (e.g. to measure the
            writing apart from the preparation).

    Raises:
        ConfigError: the shard has no live connection, a bad kind, or a kind
            its session's intents do not bring (guild dispatches all).
    """
    shard = gateway.shard(shard_id)
    session = shard.session
    conn = session.connection if session is not None else None
    if session is None or conn is None or conn.wire.closing:
        raise ConfigError(f"shard {shard_id} has no live connection to blast")
    for name in set(kinds):
        needed = gateway.intents_for(name, {"guild_id": shard.guilds[0].id})
        if needed and not session.intents & needed:
            raise ConfigError(
                f"shard {shard_id} identified without an intent that brings {name} "
                f"(any of {needed:#x}); Discord would not send it"
            )
    started = time.perf_counter()
    if shard.bodies is None:
        shard.bodies = traffic.BodyPool(traffic.VariedStream(shard_id, shard.total))
    bodies = shard.bodies.take(kinds, count)
    quote = gateway.quote
    log = session.log
    stream = shard.stream
    first_s = session.seq + 1
    first_number = stream.next_number
    s = session.seq
    texts = []
    for index, (name, body) in enumerate(bodies):
        number = stream.claim_number()
        s += 1
        if due is None:
            frame = f'{{"t":{quote(name)},"s":{s},"op":0,"d":{body},"{_NUMBER}":{number}}}}}'
        else:
            frame = (
                f'{{"t":{quote(name)},"s":{s},"op":0,"d":{body},"{_NUMBER}":{number},'
                f'"{_DUE}":{due[index]!r}}}}}'
            )
        log.append((frame, name, number))
        texts.append(frame)
    session.seq = s
    frames = conn.wire.send_blast(texts, due, hold=hold)
    return Blast(
        shard_id=shard_id,
        connection_id=conn.id,
        session_id=session.id,
        first_s=first_s,
        last_s=s,
        first_number=first_number,
        last_number=stream.next_number - 1,
        prepare_seconds=time.perf_counter() - started,
        frames=frames,
        records=gateway.records,
    )
