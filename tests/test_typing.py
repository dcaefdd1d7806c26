"""What mypy --strict says about a user's code: the docs' snippets pass, misspelled options fail.

mypy runs once, in a subprocess, over files written here: every ``..
code-block:: python`` of README.rst and of the pages in docs/, and a file of
right and wrong calls. It
checks them against this checkout's gcluster with the project's own mypy
settings (pyproject.toml). mypy comes with the test extra; CI's run without
extras deselects these tests.
"""

from __future__ import annotations

import ast
import builtins
import re
import sys
import textwrap
from pathlib import Path

import pytest
from gevent import subprocess

import gcluster

pytestmark = pytest.mark.extras

ROOT = Path(__file__).resolve().parent.parent
# Where a reader copies code from: the README and every page of the docs site.
DOCUMENTS = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]
# A cold mypy run over gcluster takes a while on a loaded machine.
MYPY_TIMEOUT = 300.0

# Names the docs' fragments use without defining them: what the text around
# them says they are. A snippet gets only the lines for names it leaves free.
FREE_NAMES = {
    "token": "token: str",
    "intents": "intents: gcluster.Intents",
    "cluster": "cluster: gcluster.Cluster",
    "index": "index: int",
    "guild_id": "guild_id: int",
    "session": "session: gcluster.ResumeSession",
    "a_cluster": "a_cluster: gcluster.Cluster",
    "b_cluster": "b_cluster: gcluster.Cluster",
    "my_registry": "import prometheus_client; my_registry: prometheus_client.CollectorRegistry",
}
FREE_NAMES.update({name: f"from gcluster import {name}" for name in gcluster.__all__})

# Lines marked "# mypy: error" must get an error; no other line may.
CALLS = """
from gcluster import (
    Activity, Cluster, ClusterOptions, EventTypeFlags, GatewayCluster, GatewayShard, Intents,
    Shard, ShardScheme, ThreadedCluster, ThreadedShard, UpdatePresence,
)

token = "token"
intents = Intents.GUILDS
Cluster(token, intents, shard_sheme=ShardScheme.auto())  # mypy: error
Cluster.new(token, intents, shard_sheme=ShardScheme.auto())  # mypy: error
ThreadedCluster(token, intents, shard_sheme=ShardScheme.auto())  # mypy: error
Cluster(token, intents, large_threshold="100")  # mypy: error
ThreadedCluster(token, intents, call_timeout=5, compression=1.5)  # mypy: error
Cluster.builder(token, intents).shard_sheme(ShardScheme.auto())  # mypy: error
Cluster.builder(token, intents).large_threshold("100")  # mypy: error
ThreadedCluster.builder(token, intents).shard_sheme(ShardScheme.auto())  # mypy: error
ThreadedCluster.builder(token, intents).api_base("http://x/api").call_timeout("5")  # mypy: error
ThreadedCluster.new(token, intents, shard_sheme=ShardScheme.auto())  # mypy: error
typo: ClusterOptions = {"shard_sheme": ShardScheme.auto()}  # mypy: error
UpdatePresence(status="idel")  # mypy: error
not_a_cluster: GatewayCluster = Shard(0, 1, token, intents, gateway_url="wss://x")  # mypy: error

options: ClusterOptions = {"shard_scheme": ShardScheme.auto(), "api_base": "http://x/api"}
Cluster(token, intents, **options)
Cluster(token, intents, shard_scheme=ShardScheme.auto(), large_threshold=100)
Cluster.new(token, intents, event_types=EventTypeFlags.READY)
ThreadedCluster(token, intents, call_timeout=5, shard_scheme=ShardScheme.range(range(2), 2))
Cluster.builder(token, intents).shard_scheme(ShardScheme.auto()).large_threshold(100).build()
built: ThreadedCluster = (
    ThreadedCluster.builder(token, intents).large_threshold(100).call_timeout(5).build()
)
renewed: ThreadedCluster = ThreadedCluster.new(token, intents, event_buffer=10, api_base="http://x")
UpdatePresence(status="idle", activities=[Activity(name="tests", type=0)])

# Both clusters, and both kinds of shard, are what the interface says.
gevent_cluster: GatewayCluster = Cluster(token, intents)
threaded_cluster: GatewayCluster = ThreadedCluster(token, intents)


def first_shard(cluster: GatewayCluster) -> GatewayShard | None:
    return cluster.shard(cluster.shard_for(81_384_788_765_712_384))


def shards(shard: Shard, handle: ThreadedShard) -> list[GatewayShard]:
    return [shard, handle, *gevent_cluster.shards(), *threaded_cluster.shards()]


first_shard(Cluster(token, intents))
first_shard(ThreadedCluster(token, intents))
"""


def python_blocks(text: str) -> list[str]:
    """Every ``.. code-block:: python`` of a reST text, dedented."""
    blocks = re.findall(r"^\.\. code-block:: python\n\n((?:(?: {4}.*)?\n)+)", text, re.M)
    directives = re.findall(r"^\s*\.\. code-block:: python\s*$", text, re.M)
    assert len(blocks) == len(directives), "a code block this test cannot read (indented?)"
    return [textwrap.dedent(block) for block in blocks]


def doc_snippets() -> dict[str, str]:
    """The snippets by file name: `docs_<page>_<n>.py`, numbered from 0 in each page."""
    snippets = {}
    for document in DOCUMENTS:
        page = re.sub(r"\W", "_", document.stem.lower())
        for index, block in enumerate(python_blocks(document.read_text(encoding="utf-8"))):
            snippets[f"docs_{page}_{index}.py"] = block
    return snippets


def free_names(source: str) -> set[str]:
    """Names the code reads and never binds (nor are builtins)."""
    loaded, bound = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)  # `except Error as err`
    return loaded - bound - set(dir(builtins))


def with_prelude(source: str) -> str:
    free = sorted(free_names(source))
    unknown = [name for name in free if name not in FREE_NAMES]
    assert not unknown, f"a docs snippet uses {unknown}: define them or add them to FREE_NAMES"
    prelude = ["import gcluster"] + [FREE_NAMES[name] for name in free]
    # The snippet keeps its own line numbers after the prelude's one line.
    return "; ".join(prelude) + "\n" + source


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[int, str]]]:
    """mypy's errors by file name, as (line, message); files that passed map to []."""
    where = tmp_path_factory.mktemp("typing")
    files = {}
    for name, snippet in doc_snippets().items():
        files[name] = with_prelude(snippet)
    files["calls.py"] = CALLS
    for name, source in files.items():
        (where / name).write_text(source)
    command = [
        sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
        "--cache-dir", str(where / ".mypy_cache"), "--no-error-summary", "--show-error-codes",
        # gcluster's own errors are `mypy gcluster`'s business (and would need its stubs).
        "--follow-imports", "silent",
        *sorted(str(where / name) for name in files),
    ]  # fmt: skip
    # From the checkout's root, so `import gcluster` finds this checkout.
    proc = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=MYPY_TIMEOUT, check=False
    )
    assert proc.returncode in (0, 1), f"mypy failed to run:\n{proc.stdout}\n{proc.stderr}"
    errors: dict[str, list[tuple[int, str]]] = {name: [] for name in files}
    for line in proc.stdout.splitlines():
        if re.match(r".+?:\d+: note: ", line):
            continue  # hints that go with an error
        match = re.match(r"(.+?):(\d+): error: (.*)", line)
        assert match, f"unexpected mypy output: {line}"
        name = Path(match[1]).name
        assert name in errors, f"mypy found errors outside the checked files: {line}"
        errors[name].append((int(match[2]), match[3]))
    return errors


def test_docs_snippets_pass_mypy_strict(mypy_errors: dict[str, list[tuple[int, str]]]) -> None:
    docs = {name: found for name, found in mypy_errors.items() if name.startswith("docs_")}
    assert len(docs) == len(doc_snippets()) >= 12
    # Line numbers are the snippet's own (the prelude is line 1).
    failed = {
        name: [(line - 1, message) for line, message in found]
        for name, found in docs.items()
        if found
    }
    assert not failed, f"docs snippets (docs_<page>_<n>, n from 0) fail mypy --strict: {failed}"


def test_misspelled_or_mistyped_options_fail_mypy(
    mypy_errors: dict[str, list[tuple[int, str]]],
) -> None:
    marked = {
        number for number, line in enumerate(CALLS.splitlines(), 1) if "# mypy: error" in line
    }
    found = {line for line, _ in mypy_errors["calls.py"]}
    assert found == marked, mypy_errors["calls.py"]
    messages = " ".join(message for _, message in mypy_errors["calls.py"])
    assert 'Unexpected keyword argument "shard_sheme"' in messages


def test_free_names_are_found() -> None:
    source = "import os\nx = os.environ[token]\ndef f(a: int) -> int:\n    return a + cluster\n"
    assert free_names(source) == {"token", "cluster"}
