"""What an example needs beyond gcluster's core, checked before anything starts.

Without these checks an example that lacks a package failed with a traceback,
and one whose Redis was not running kept retrying for half a minute before
its tracebacks. Each check exits at once with one line on standard error
saying what to install or start.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import NoReturn

# How long a Redis may take to accept the connection, and to answer PING.
REDIS_TIMEOUT = 0.5


def package(module: str, install: str) -> None:
    """Exit unless `module` imports; `install` says how to get it."""
    try:
        importlib.import_module(module)
    except ImportError:
        fail(f"needs the {module} package: {install}")


def redis(url: str) -> None:
    """Exit unless the redis extra is installed and a Redis answers PING at `url`."""
    package("redis", "pip install 'gcluster[redis]'")
    import redis as redis_py
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        client = redis_py.Redis.from_url(
            url,
            socket_connect_timeout=REDIS_TIMEOUT,
            socket_timeout=REDIS_TIMEOUT,
            # One attempt: redis-py would retry a failed connection three times.
            retry=Retry(NoBackoff(), 0),
        )
    except ValueError as err:
        fail(f"{url!r} is not a Redis URL ({err})")
    try:
        client.ping()
    except (redis_py.RedisError, OSError) as err:
        fail(f"no Redis answers at {url} ({err}): start one (redis-server), or pass its URL")
    finally:
        client.close()


def fail(message: str) -> NoReturn:
    """Exit with status 1 and one line: the script's name and `message`."""
    raise SystemExit(f"{os.path.basename(sys.argv[0])}: {message}")
