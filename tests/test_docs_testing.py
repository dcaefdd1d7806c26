"""docs/testing.rst does what it says: each of its snippets runs and its asserts hold.

Each ``.. code-block:: python`` of that page is a whole program; it runs
here as a script of its own, as a reader would paste it.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
from gevent import subprocess

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "testing.rst"
# Each runs in a few seconds; this only bounds a broken one.
LIMIT = 60.0


def page_snippets() -> list[str]:
    text = PAGE.read_text(encoding="utf-8")
    blocks = re.findall(r"^\.\. code-block:: python\n\n((?:(?: {4}.*)?\n)+)", text, re.M)
    return [textwrap.dedent(block) for block in blocks]


def test_the_page_has_its_three_programs() -> None:
    snippets = page_snippets()
    assert len(snippets) == 3
    assert "GatewaySimulator(" in snippets[0] and "Cluster(" in snippets[0]
    assert "SimulatorProcess(" in snippets[1] and "ThreadedCluster(" in snippets[1]
    assert "HubThread(" in snippets[2]


@pytest.mark.parametrize("index", range(3), ids=["in-process", "process", "hub-thread"])
def test_each_snippet_runs(index: int, tmp_path: Path) -> None:
    script = tmp_path / f"snippet_{index}.py"
    script.write_text(page_snippets()[index])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=LIMIT,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
