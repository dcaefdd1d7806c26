"""The documentation site builds with Sphinx with no warning, nitpicky: every
page, and the API reference generated from the docstrings.

A docstring that breaks reST, a page left out of every toctree or a broken
cross-reference fails here, as it would fail the site's build in CI. Sphinx
comes with the test extra (and the docs extra).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from gevent import subprocess

pytestmark = pytest.mark.extras

ROOT = Path(__file__).resolve().parent.parent
# A build takes seconds; this only bounds a stuck one on a loaded machine.
LIMIT = 300.0


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "html"
    command = [
        sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
        "-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(out),
    ]  # fmt: skip
    proc = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=LIMIT, check=False
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert not proc.stderr.strip(), proc.stderr
    # The reference holds the public names, from the package that exports them.
    api = (out / "api" / "gcluster.html").read_text(encoding="utf-8")
    assert 'id="gcluster.Cluster"' in api and 'id="gcluster.ThreadedCluster"' in api
    redis = (out / "api" / "redis.html").read_text(encoding="utf-8")
    assert 'id="gcluster.redis.StreamWorker"' in redis
    for page in ("getting-started", "events", "consuming", "testing", "changelog"):
        assert (out / f"{page}.html").is_file(), page
