"""Sphinx configuration for gcluster's documentation site.

Build it (from the repository root, with the ``docs`` extra installed)::

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst.states import Inliner
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.ext.napoleon.docstring import GoogleDocstring
from sphinx.util.nodes import make_refnode

ROOT = Path(__file__).resolve().parent.parent
# The checkout's own gcluster, whether or not it is installed.
sys.path.insert(0, str(ROOT))

import gcluster  # noqa: E402

project = "gcluster"
author = "gcluster contributors"
copyright = "gcluster contributors"  # noqa: A001 (Sphinx's name for it)
version = release = gcluster.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {"description": "Discord gateway shards for synchronous Python, on gevent."}

# Docstrings say `Name` for a name the reader should look up: see the role below.
default_role = "gcluster-name"
nitpicky = True
# Names no page of this site documents: the standard library's and the
# dependencies' types in signatures (no intersphinx: the build needs no
# network), and private helpers that public signatures mention.
nitpick_ignore_regex = [
    ("py:.*", r"(collections\.abc|typing|types|ssl|socket|threading|queue|logging|enum)\..*"),
    ("py:.*", r"(gevent|redis|prometheus_client|requests|typing_extensions)(\..*)?"),
    ("py:class", r"(collections|pathlib)\.\w+(\[.*)?"),
    ("py:class", r"(T|Token|CollectorRegistry)"),
    # A dataclass field typed dict[int, X] reaches the checker split at its comma.
    ("py:class", r"dict\[int"),
    (
        "py:class",
        r"gcluster\.(_token\.Token|Token|_json\.JsonReady|interface\.ClusterLifecycle"
        r"|hubthread\.T|backoff\.Backoff|testing\.wire\.BlastFrames|redis\._client\.RedisTarget)",
    ),
]

autodoc_member_order = "groupwise"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Attributes:" sections document dataclass fields, which autodoc lists too.


def _attribute_docstring(self: GoogleDocstring) -> list[str]:
    # napoleon reads an attribute's or property's first line as "type:
    # description"; these docstrings never start with a type (annotations
    # carry it), so the whole text is the description.
    return GoogleDocstring(self._consume_to_end(), self._config).lines()


GoogleDocstring._parse_attribute_docstring = _attribute_docstring  # type: ignore[method-assign]


# A backquoted name in a docstring (`Cluster`, `ShardScheme.auto()`) links to
# its entry when this site documents it, and is shown as code otherwise:
# docstrings also backquote expressions (`{shard_id: ResumeSession}`) and
# names of other libraries, which are not broken links.
_NAME = re.compile(r"[A-Za-z_][\w.]*")


def _name_role(
    name: str,
    rawtext: str,
    text: str,
    lineno: int,
    inliner: Inliner,
    options: Any = None,
    content: Any = None,
) -> tuple[list[nodes.Node], list[nodes.system_message]]:
    target = text[:-2] if text.endswith("()") else text
    if not _NAME.fullmatch(target):
        return [nodes.literal(rawtext, text)], []
    env = inliner.document.settings.env
    ref = addnodes.pending_xref(
        rawtext,
        refdomain="py",
        reftype="obj",
        reftarget=target,
        refexplicit=False,
        refwarn=False,
        gcluster_name=True,
    )
    ref["py:module"] = env.ref_context.get("py:module")
    ref["py:class"] = env.ref_context.get("py:class")
    ref += nodes.literal(rawtext, text, classes=["xref", "py", "py-obj"])
    return [ref], []


def _unresolved_name(
    app: Sphinx, env: BuildEnvironment, node: addnodes.pending_xref, contnode: nodes.Element
) -> nodes.Node | None:
    """Links a name no entry of its own module or class has to the one entry
    elsewhere that ends with it; shows it as code, without a warning, when
    there is none or more than one."""
    if not node.get("gcluster_name"):
        return None
    domain = env.get_domain("py")
    matches = domain.find_obj(  # type: ignore[attr-defined]
        env, node.get("py:module"), node.get("py:class"), node["reftarget"], None, 1
    )
    if len(matches) != 1:
        return contnode
    name, entry = matches[0]
    return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, name)


# Args, Attributes and Raises sections become definition lists before
# napoleon sees them: their entries often name several things at once
# ("token, intents, **options: as for `Cluster`", "identifies, resumes: ..."),
# which napoleon would read as a type followed by a name.
_SECTION = re.compile(
    r"^(\s*)(Args|Arguments|Parameters|Keyword Args|Keyword Arguments|Attributes|Raises):\s*$"
)
_ONE = r"\*{0,2}[A-Za-z_][\w.]*(?:\s*\([^)]*\))?"
_ENTRY = re.compile(rf"^({_ONE}(?:,\s*{_ONE})*):(?:\s+(.*))?$")
_NAMES = re.compile(rf"^({_ONE}(?:,\s*{_ONE})*)\.?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _term(names: str, section: str) -> str:
    parts = [part.strip() for part in names.split(",") if part.strip()]
    if section == "Raises":
        return ", ".join(f"`{part}`" for part in parts)
    return ", ".join(f"``{part}``" for part in parts)


def _section_lines(title: str, body: list[str], pad: str) -> list[str]:
    content = [line for line in body if line.strip()]
    if not content:
        return []
    base = min(_indent(line) for line in content)
    entries: list[tuple[str, list[str]]] = []
    for line in body:
        if not line.strip():
            if entries:
                entries[-1][1].append("")
        elif _indent(line) == base or not entries:
            entries.append((line.strip(), []))
        else:
            entries[-1][1].append(line)
    out = ["", f"{pad}.. rubric:: {title}", ""]
    for head, rest in entries:
        while rest and not rest[-1]:
            rest.pop()
        inner = [line for line in rest if line]
        cut = min((_indent(line) for line in inner), default=0)
        rest = [line[cut:] for line in rest]
        entry = _ENTRY.match(head)
        if entry and (entry[2] or rest):
            out.append(pad + _term(entry[1], title))
            out += [f"{pad}   {line}" if line else "" for line in [entry[2] or "", *rest]]
        else:
            text = " ".join([head, *(line.strip() for line in rest if line)])
            names = _NAMES.match(text)
            out.append(pad + (_term(names[1], title) if names else text))
        out.append("")
    return out


def _sections_as_lists(
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    out: list[str] = []
    index = 0
    while index < len(lines):
        section = _SECTION.match(lines[index])
        if not section:
            out.append(lines[index])
            index += 1
            continue
        base = len(section[1])
        index += 1
        body: list[str] = []
        while index < len(lines) and (not lines[index].strip() or _indent(lines[index]) > base):
            body.append(lines[index])
            index += 1
        out += _section_lines(section[2], body, section[1])
    lines[:] = out


def setup(app: Sphinx) -> None:
    app.add_role("gcluster-name", _name_role)
    app.connect("missing-reference", _unresolved_name)
    # Before napoleon's handler (priority 500).
    app.connect("autodoc-process-docstring", _sections_as_lists, priority=400)
