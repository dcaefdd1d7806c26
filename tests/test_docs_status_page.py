"""docs/status-page.rst's example runs as it is, and its asserts hold."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from gevent import subprocess

ROOT = Path(__file__).resolve().parent.parent


def test_the_example_runs() -> None:
    text = (ROOT / "docs" / "status-page.rst").read_text(encoding="utf-8")
    blocks = re.findall(r"^\.\. code-block:: python\n\n((?:(?: {4}.*)?\n)+)", text, re.M)
    assert len(blocks) == 1
    code = "\n".join(line[4:] for line in blocks[0].splitlines())
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"status page at http://127\.0\.0\.1:\d+/status\n", proc.stdout)
