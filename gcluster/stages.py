"""A shard connection's stages and every move between them, in one table.

As in h11's `_state.py`, whatever changes the stage goes through here:
`StageMachine.move(trigger)` looks the move up in `TRANSITIONS` and refuses
any that is not there with `LocalProtocolError`, so a driver bug shows at the
call that made it instead of as a shard in a stage that cannot happen.
Triggers the gateway causes (HELLO, READY, RESUMED) are asked with `allows()`
first: a gateway sending them out of turn breaks the rules, which is the
protocol's business, not an error of this side.

    DISCONNECTED --connect--> CONNECTING --hello_identify--> IDENTIFYING --ready--> CONNECTED
                                         --hello_resume----> RESUMING ---resumed--> CONNECTED
    any live stage --closed--> DISCONNECTED, or --fatal--> FATALLY_CLOSED
    FATALLY_CLOSED --revive--> DISCONNECTED
"""

from __future__ import annotations

import enum
from typing import Final

from gcluster.errors import InvalidState

__all__ = ["TRANSITIONS", "LocalProtocolError", "Stage", "StageMachine", "Trigger"]


class Stage(enum.Enum):
    """Where a shard is in its connection's life."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"  # socket opening, or waiting for HELLO
    IDENTIFYING = "identifying"  # HELLO received, IDENTIFY pending or sent
    RESUMING = "resuming"  # RESUME sent, replay not finished
    CONNECTED = "connected"  # READY or RESUMED received
    FATALLY_CLOSED = "fatally_closed"  # a close code that forbids retrying


class Trigger(enum.Enum):
    CONNECT = "connect"  # the driver opens a connection
    HELLO_IDENTIFY = "hello_identify"  # HELLO, no session: IDENTIFY next
    HELLO_RESUME = "hello_resume"  # HELLO with a session: RESUME sent
    READY = "ready"
    RESUMED = "resumed"
    CLOSED = "closed"  # the connection ended and the session may go on
    FATAL = "fatal"  # a close code, or this side, forbids trying again
    SHUT_DOWN = "shut_down"  # the application stops the shard
    REVIVE = "revive"  # the application restarts a fatally closed shard


_S = Stage
_T = Trigger
_LIVE: Final = (_S.CONNECTING, _S.IDENTIFYING, _S.RESUMING, _S.CONNECTED)

TRANSITIONS: Final[dict[Stage, dict[Trigger, Stage]]] = {
    _S.DISCONNECTED: {
        _T.CONNECT: _S.CONNECTING,
        _T.CLOSED: _S.DISCONNECTED,  # the socket of a connection already given up
        _T.FATAL: _S.FATALLY_CLOSED,
        _T.SHUT_DOWN: _S.DISCONNECTED,
    },
    _S.CONNECTING: {_T.HELLO_IDENTIFY: _S.IDENTIFYING, _T.HELLO_RESUME: _S.RESUMING},
    _S.IDENTIFYING: {_T.READY: _S.CONNECTED},
    _S.RESUMING: {_T.RESUMED: _S.CONNECTED},
    _S.CONNECTED: {},
    _S.FATALLY_CLOSED: {
        _T.CLOSED: _S.FATALLY_CLOSED,  # the socket closing after the shard gave up
        _T.FATAL: _S.FATALLY_CLOSED,
        _T.SHUT_DOWN: _S.DISCONNECTED,
        _T.REVIVE: _S.DISCONNECTED,
    },
}
# What every live connection may do: end, end for good, or be stopped.
for _stage in _LIVE:
    TRANSITIONS[_stage].update(
        {_T.CLOSED: _S.DISCONNECTED, _T.FATAL: _S.FATALLY_CLOSED, _T.SHUT_DOWN: _S.DISCONNECTED}
    )


class LocalProtocolError(InvalidState):
    """The driver asked for a move its connection's stage does not allow (a bug)."""


class StageMachine:
    """The current stage; changed only by `move`."""

    __slots__ = ("stage",)

    def __init__(self) -> None:
        self.stage = Stage.DISCONNECTED

    def allows(self, trigger: Trigger) -> bool:
        return trigger in TRANSITIONS[self.stage]

    def move(self, trigger: Trigger) -> Stage:
        """Make the move `trigger` names from the current stage.

        Raises:
            LocalProtocolError: the table has no such move from this stage.
        """
        try:
            self.stage = TRANSITIONS[self.stage][trigger]
        except KeyError:
            # The KeyError says nothing the message does not.
            raise LocalProtocolError(
                f"{trigger.value} is not allowed in stage {self.stage.value}"
            ) from None
        return self.stage
