"""Mutation testing of the pure modules against their own unit tests (mutmut 3).

Not part of CI: all the modules take a few minutes on two cores, and tens of
minutes on a loaded machine. Each module is mutated alone, in a scratch copy
of the checkout (``benchmarks/results/mutation/<module>/``, git-ignored), and
only the test files listed for it below run against its mutants, so a mutant
counts as killed only when the module's own unit tests notice it, not when
some loopback test happens to trip over it.

.. code-block:: sh

    pip install 'mutmut>=3.3,<4'
    python benchmarks/mutation.py                     # every module
    python benchmarks/mutation.py frames backoff      # some of them
    python benchmarks/mutation.py frames --diff       # with each survivor's diff
    python benchmarks/mutation.py frames --tests tests/unit/test_wire.py   # other tests

For each module it prints the score (killed / mutants; a mutant no test
reaches counts as surviving), the score once the equivalent mutants listed in
`EQUIVALENT` are left out, and every survivor: a listed one with the reason it
is equivalent, any other as a test to write. The results are also written to
``benchmarks/results/mutation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / "benchmarks" / "results" / "mutation"
RESULTS = ROOT / "benchmarks" / "results" / "mutation.json"

# Each pure module and the unit tests that are its own (no sockets, no simulator).
MODULES: dict[str, list[str]] = {
    "frames": [
        "tests/unit/test_wire.py",
        "tests/unit/test_properties.py",
        "tests/unit/test_frames.py",
    ],
    "peek": ["tests/unit/test_wire.py", "tests/unit/test_properties.py"],
    "inflate": [
        "tests/unit/test_wire.py",
        "tests/unit/test_properties.py",
        "tests/unit/test_inflate.py",
    ],
    "protocol": ["tests/unit/test_protocol.py", "tests/unit/test_protocol_rules.py"],
    "stages": ["tests/unit/test_protocol.py", "tests/unit/test_protocol_rules.py"],
    "backoff": ["tests/unit/test_policies.py", "tests/unit/test_backoff.py"],
    "ratelimit": ["tests/unit/test_policies.py", "tests/unit/test_ratelimit.py"],
    "scheme": ["tests/test_config.py", "tests/unit/test_scheme.py"],
    "_token": [
        "tests/unit/test_token.py",
        "tests/unit/test_properties.py",
        "tests/unit/test_token_rules.py",
    ],
    "handshake": ["tests/unit/test_handshake.py"],
}

# Mutants no test can kill because the program does the same with them:
# (function, text of the mutated line, why). A survivor is taken as one of
# these only when its diff adds a line holding that text in that function, so
# an entry that no longer fits the code stops matching instead of hiding a
# real survivor.
EQUIVALENT: dict[str, list[tuple[str, str, str]]] = {
    "frames": [
        ("_check_utf8", 'decode("UTF-8")', "codec names are case-insensitive"),
        ("parse_close", 'decode("UTF-8")', "codec names are case-insensitive"),
        (
            "FrameParser.__init__",
            "self._needed = None",
            "_needed is read only while bytes are buffered, and feed() sets it first",
        ),
        (
            "FrameParser.__init__",
            "self._needed = 1",
            "_needed is read only while bytes are buffered, and feed() sets it first",
        ),
        (
            "FrameParser.feed",
            "if pos <= end:",
            "at pos == end it appends an empty slice: the guard only skips that",
        ),
        (
            "FrameParser.feed",
            "needed = 1",
            "a buffer is never shorter than 1 byte, so needing 1 never skips a parse",
        ),
        (
            "FrameParser.feed",
            "needed = header - length",
            "only lets feed() re-parse an incomplete long frame on every read: "
            "slower, same messages",
        ),
    ],
    "peek": [
        ("peek_dispatch", 'decode("ASCII")', "codec names are case-insensitive"),
    ],
    "inflate": [
        (
            "ZlibStreamInflater.feed",
            "self._header = None",
            "None is as false as False: the header is still read once",
        ),
        (
            "ZlibStreamInflater.feed",
            "self.max_size + 2",
            "inflating 2 bytes past the limit tells 'over' from 'not over' as well as 1",
        ),
        (
            "ZstdStreamInflater.feed",
            "max(65,",
            "slices of 65 bytes instead of 64: the same output, a bound 1/64 looser",
        ),
        (
            "ZstdStreamInflater.feed",
            "(len(pieces) == 1) and False",
            "joining a single piece gives the same bytes (the shortcut saves a copy)",
        ),
        (
            "ZstdStreamInflater.feed",
            "while start <= len(data):",
            "one more decompress() of b'' at the end, which inflates nothing",
        ),
    ],
    "protocol": [
        (
            "_encode",
            "ensure_ascii=None",
            "ujson reads ensure_ascii as a flag: None is as false as False",
        ),
        (
            "ShardProtocol.__init__",
            'self._connection_url: str | None = ""',
            "read only by _ready, which connecting() always precedes by setting it",
        ),
        (
            "ShardProtocol._ready",
            'self._connection_url or "XXXX"',
            "connecting() always sets the URL before a READY; and no fallback starts with wss:",
        ),
        (
            "ShardProtocol._invalid_session",
            "resume=True,",
            "the session was forgotten just before, so _reconnect resumes only with one: never",
        ),
        (
            "ShardProtocol.closed",
            "verdict = None",
            "a client close's verdict is only compared with FATAL and REIDENTIFY: None is RESUME",
        ),
    ],
    "scheme": [
        (
            "ShardScheme.resolve",
            "if self.ids is not None or self.total is not None:",
            "the constructors set ids and total together (both or neither)",
        ),
    ],
    "_token": [
        (
            "Token.redact",
            "(self._raw in text) or True",
            "the substring test only skips the regex when the token cannot be there",
        ),
    ],
    "handshake": [
        ("_rejected", 'decode("LATIN-1")', "codec names are case-insensitive"),
        ("ClientHandshake.__init__", 'decode("ASCII")', "codec names are case-insensitive"),
        (
            "ClientHandshake.__init__",
            "h11.Connection(h11.CLIENT, )",
            "MAX_HEADERS is h11's own default (16 KiB); the argument says so explicitly",
        ),
        (
            "ClientHandshake._check_accept",
            'b"XXXX"',
            "a missing header's default is refused whatever it is, as long as it is "
            "not the expected value",
        ),
        (
            "ClientHandshake.receive",
            "raise HandshakeError(None)",
            "unreachable: before the answer h11 gives a client only 1xx, a response, or an error",
        ),
    ],
}

# Loaded by the scratch copy's root conftest: Hypothesis draws the same
# examples for every mutant and keeps no database between them, so a score
# does not depend on what an earlier mutant happened to find.
_CONFTEST = """\
from hypothesis import settings

settings.register_profile("mutation", derandomize=True, database=None)
settings.load_profile("mutation")
"""

# mutmut's exit codes (mutmut/stats.py): killed, timed out (an endless loop
# is caught too), or caught by the type checker all count as killed.
_KILLED = {1, 3, 24, -24, 152, 255, 36, 37}
_SURVIVED = 0
_NO_TESTS = {5, 33}

# Run in the scratch copy: every survivor's diff, as `mutmut show` prints it.
_DIFFS = """\
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
path, names = json.load(sys.stdin)
print(json.dumps({name: get_diff_for_mutant(name, path=path) for name in names}))
"""


def _mutmut() -> str:
    return str(Path(sys.executable).with_name("mutmut"))


def prepare(module: str, tests: list[str]) -> Path:
    """A fresh scratch copy of the checkout set up to mutate `module` alone."""
    work = SCRATCH / module
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "gcluster", work / "gcluster", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    shutil.copy2(ROOT / "setup.cfg", work / "setup.cfg")
    (work / "conftest.py").write_text(_CONFTEST)
    config = {
        "source_paths": ["gcluster"],
        "only_mutate": [f"gcluster/{module}.py"],
        "also_copy": ["conftest.py"],
        "pytest_add_cli_args": ["-p", "no:cacheprovider"],
        "pytest_add_cli_args_test_selection": tests,
    }
    lines = ["[tool.mutmut]"] + [f"{key} = {json.dumps(value)}" for key, value in config.items()]
    (work / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return work


def function_of(mutant: str, module: str) -> str:
    """`Class.method` or `function` from a mutant's name (gcluster.m.xǁCǁf__mutmut_3)."""
    name = mutant.removeprefix(f"gcluster.{module}.").rsplit("__mutmut_", 1)[0]
    if "ǁ" in name:
        _, cls, method = name.split("ǁ")
        return f"{cls}.{method}"
    return name.removeprefix("x_")


def diffs(work: Path, module: str, names: list[str]) -> dict[str, str]:
    """Each mutant's diff against the original function."""
    if not names:
        return {}
    path = f"gcluster/{module}.py"
    done = subprocess.run(
        [sys.executable, "-c", _DIFFS],
        cwd=work,
        input=json.dumps([path, names]),
        capture_output=True,
        text=True,
    )
    if done.returncode == 0:
        found: dict[str, str] = json.loads(done.stdout)
        return found
    # Another mutmut version: ask its command line, one mutant at a time.
    found = {}
    for name in names:
        shown = subprocess.run([_mutmut(), "show", name], cwd=work, capture_output=True, text=True)
        found[name] = shown.stdout.split("\n", 1)[-1]
    return found


def equivalent_reason(module: str, mutant: str, diff: str) -> str | None:
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and line[1:2] != "+"]
    function = function_of(mutant, module)
    for where, text, reason in EQUIVALENT.get(module, []):
        if where == function and any(text in line for line in added):
            return reason
    return None


def run(module: str, tests: list[str], max_children: int) -> dict[str, Any]:
    missing = [t for t in tests if not (ROOT / t).exists()]
    if missing:
        raise SystemExit(f"{module}: no such test file: {', '.join(missing)}")
    work = prepare(module, tests)
    env = dict(os.environ)
    # The checkout on PYTHONPATH would shadow the mutants with the real module.
    env.pop("PYTHONPATH", None)
    command = [_mutmut(), "run", "--max-children", str(max_children)]
    started = time.monotonic()
    log = work / "mutmut.log"
    with log.open("w") as out:
        done = subprocess.run(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    meta = work / "mutants" / "gcluster" / f"{module}.py.meta"
    if done.returncode != 0 or not meta.exists():
        raise SystemExit(f"{module}: mutmut failed (exit {done.returncode}), see {log}")
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    killed = [k for k, c in codes.items() if c in _KILLED]
    alive = sorted(k for k in codes if k not in killed)
    diff_by_name = diffs(work, module, alive)
    equivalent: dict[str, str] = {}
    survived: dict[str, str] = {}
    for name in alive:
        code = codes[name]
        reason = equivalent_reason(module, name, diff_by_name.get(name, ""))
        if reason is not None and code == _SURVIVED:
            equivalent[name] = reason
        else:
            status = "survived" if code == _SURVIVED else "no tests" if code in _NO_TESTS else code
            survived[name] = f"{status}\n{diff_by_name.get(name, '').rstrip()}"
    total = len(codes)
    return {
        "module": module,
        "tests": tests,
        "mutants": total,
        "killed": len(killed),
        "score": len(killed) / total if total else 1.0,
        "score_without_equivalent": (
            len(killed) / (total - len(equivalent)) if total > len(equivalent) else 1.0
        ),
        "equivalent": equivalent,
        "survived": survived,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help=f"any of {', '.join(MODULES)} (all)")
    parser.add_argument("--tests", nargs="+", help="test files to use instead of the module's own")
    parser.add_argument("--max-children", type=int, default=2, help="parallel workers (2)")
    parser.add_argument("--diff", action="store_true", help="print each survivor's diff")
    args = parser.parse_args()
    modules = args.modules or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    if not Path(_mutmut()).exists():
        raise SystemExit("mutmut is not installed beside this python: pip install mutmut")
    print(f"{'module':<10} {'score':>6} {'w/o eq.':>7}  killed/mutants  equivalent  time")
    results = []
    for module in modules:
        result = run(module, args.tests or MODULES[module], args.max_children)
        results.append(result)
        print(
            f"{module:<10} {result['score']:6.1%} {result['score_without_equivalent']:7.1%}"
            f"  {result['killed']:>6}/{result['mutants']:<7}  {len(result['equivalent']):>10}"
            f"  {result['seconds']} s",
            flush=True,
        )
        for name, reason in result["equivalent"].items():
            print(f"    equivalent  {name}: {reason}")
        for name, status_and_diff in result["survived"].items():
            status, diff = status_and_diff.split("\n", 1)
            print(f"    {status:<10}  {name}")
            if args.diff:
                print("\n".join(f"        {line}" for line in diff.splitlines()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    previous.update({r["module"]: r for r in results})
    RESULTS.write_text(json.dumps(previous, indent=2) + "\n")


if __name__ == "__main__":
    main()
