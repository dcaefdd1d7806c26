"""docs/performance.rst is true: its program runs, and the --version it shows has the same form."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

from gevent import subprocess

from gcluster.__main__ import version_text

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "performance.rst"


def python_blocks() -> list[str]:
    text = PAGE.read_text()
    blocks = re.findall(r"^\.\. code-block:: python\n\n((?:(?: {4}.*)?\n)+)", text, re.M)
    return [textwrap.dedent(block) for block in blocks]


def test_the_start_up_log_example_runs(tmp_path: Path) -> None:
    (snippet,) = python_blocks()
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    # What this interpreter has, in the log line the example writes.
    json_line = version_text().splitlines()[3].split(": ", 1)[1].split(" (")[0]
    assert f"INFO:root:JSON: {json_line}, zlib-stream: " in proc.stderr


def test_the_version_output_shown_has_the_lines_version_prints() -> None:
    text = PAGE.read_text()
    shown = re.search(r"``python -m gcluster --version``.*?::\n\n((?: {4}[^\n]*\n)+)", text, re.S)
    assert shown is not None
    labels = [line.strip().split(" ")[0] for line in shown.group(1).splitlines()]
    printed = [line.split(" ")[0] for line in version_text().splitlines()]
    assert labels == printed
