"""Peak memory under a decompression bomb and a compressed message that never ends.

Measured in a child process (tests/_memory_child.py), whose peak RSS is its
own: the bomb inflates to 200 MiB and the endless message is 64 MiB, with a
1 MiB limit; the peak may grow by a few times the limit, never by the message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
LIMIT = 1 << 20


def run_child(mode: str, size: int) -> dict[str, int]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(HERE)]))
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "_memory_child.py"), mode, str(size), str(LIMIT)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=True,
    )
    result: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(("mode", "size"), [("bomb", 200 << 20), ("endless", 64 << 20)])
def test_peak_memory_stays_near_the_limit(mode: str, size: int) -> None:
    result = run_child(mode, size)
    assert result["close"] == 1009
    grown_kib = result["after"] - result["before"]
    # The bound: a few buffers of LIMIT bytes (received, inflated, joined),
    # against 200 or 64 MiB without one.
    assert grown_kib < 8 * LIMIT // 1024, f"peak RSS grew by {grown_kib} KiB"
