"""The exit statuses of `python -m gcluster`, shared by its commands and service mode.

A script or a supervisor that runs the command line acts on the status alone:
retrying after an outage (1) makes sense, retrying a token or intents the
gateway refused (3) does not.
"""

from __future__ import annotations

import enum

from gcluster.errors import GatewayClosedError

__all__ = ["EPILOG", "ExitStatus", "exit_status"]


class ExitStatus(enum.IntEnum):
    """What `python -m gcluster` exits with; `EPILOG` describes them for ``--help``."""

    OK = 0
    ERROR = 1
    USAGE = 2
    FATAL_CLOSE = 3


EPILOG = """\
exit status:
  0  done: run's --limit or the demo's --events or --duration reached,
     SIGINT or SIGTERM, or the reader of stdout went away (| head)
  1  an error: the gateway, the simulator or Redis failed or was
     unreachable, the shards did not start, events read but not published
     or sessions not saved (--sink), a lease lost or refused (an
     overlapping --scheme, another --shards), a missing extra
  2  usage: an unknown option or a bad value (of a flag or a GCLUSTER_*
     variable); DISCORD_TOKEN not set or blank
  3  the gateway refused the bot for good: a fatal close code such as 4004
     (token), 4013 (invalid intents) or 4014 (disallowed intents), or a token
     refused by GET /gateway/bot
"""


def exit_status(error: BaseException) -> ExitStatus:
    """FATAL_CLOSE for a `GatewayClosedError` (retrying would fail the same way), else ERROR."""
    return ExitStatus.FATAL_CLOSE if isinstance(error, GatewayClosedError) else ExitStatus.ERROR
