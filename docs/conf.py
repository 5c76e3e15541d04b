"""Sphinx configuration of the thespian_dd documentation (``make docs`` builds it)."""  # noqa: INP001 - a config file, not a package

import dataclasses
import inspect
import re
import sys
from pathlib import Path
from typing import get_origin

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

# The package documents itself from this checkout, whether or not it is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import thespian_dd

project = "thespian_dd"
author = "thespian_dd contributors"
copyright = "thespian_dd contributors"  # noqa: A001 - Sphinx's name for it
release = thespian_dd.__version__
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3

autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "furo"
html_title = f"thespian_dd {release}"

# A broken reference fails the build (make docs: -n -W), except to what the reference does not
# document on purpose: the internals (modules starting with "_"), and Thespian and the standard
# library, whose inventories would have to be fetched from the network at every build.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"thespian_dd\._.*"),
    (r"py:.*", r"thespian\..*"),
    (r"py:.*", r"(abc|collections\.abc|typing|dataclasses|pathlib|types)\..*"),
    # Dots and causal contexts appear in the constructors of the dot-based types: internals.
    (r"py:class", r"thespian_dd\.data\.(CausalContext|Dot)"),
    # Sphinx splits a generic field annotation such as "dict[str, int]" at its commas.
    (r"py:class", r".*\[.*"),
]


def _public_bases(  # the signature of Sphinx's autodoc-process-bases event
    app: object,  # noqa: ARG001
    name: str,  # noqa: ARG001
    obj: object,  # noqa: ARG001
    options: object,  # noqa: ARG001
    bases: list[type],
) -> None:
    """Show a class's public bases: a private base is replaced by its own bases, ``ABC`` and
    ``object`` are left out (``object`` stays when nothing else is left)."""
    public = set(thespian_dd.__all__)
    shown: list[type] = []
    pending = list(bases)
    while pending:
        base = pending.pop(0)
        cls = get_origin(base) or base  # ORMapBacked[K] stands for the class ORMapBacked
        if cls is object or cls.__module__ == "abc":
            continue
        if cls.__module__.startswith("thespian_dd") and cls.__name__ not in public:
            pending[:0] = list(cls.__bases__)
        elif base not in shown:
            shown.append(base)
    bases[:] = shown or [object]  # Sphinx prints "Bases:" even for an empty list


_BULLET = re.compile(r"^- ``(\w+)``: ", re.MULTILINE)


def settings_rows() -> list[tuple[str, str, str]]:
    """``(name, default, meaning)`` of every field of :class:`thespian_dd.Settings`, the meaning
    taken from the bullet of the class docstring that names the field.  Raises ``ValueError``
    when a field has no bullet, or a bullet names no field, so the table cannot drift from the
    code."""
    doc = inspect.cleandoc(thespian_dd.Settings.__doc__ or "")  # 3.13 dedents docstrings itself
    starts = list(_BULLET.finditer(doc))
    meanings = {}
    for here, after in zip(starts, [*starts[1:], None], strict=True):
        text = doc[here.end() : after.start() if after else len(doc)]
        meanings[here.group(1)] = " ".join(text.split())
    fields = dataclasses.fields(thespian_dd.Settings)
    names = [f.name for f in fields]
    if list(meanings) != names:
        raise ValueError(
            f"Settings' docstring must have one bullet per field, in field order: "
            f"fields {names}, bullets {list(meanings)}"
        )
    defaults = thespian_dd.Settings()
    return [(name, repr(getattr(defaults, name)), meanings[name]) for name in names]


class SettingsTable(SphinxDirective):
    """``.. settings-table::``: the table of every setting, its default and its meaning."""

    def run(self) -> list[nodes.Node]:
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 20 15 65", ""]
        lines += ["   * - setting", "     - default", "     - meaning"]
        for name, default, meaning in settings_rows():
            lines += [f"   * - ``{name}``", f"     - ``{default}``", f"     - {meaning}"]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="Settings"), 0, container)
        return container.children


def setup(app: Sphinx) -> None:
    app.connect("autodoc-process-bases", _public_bases)
    app.add_directive("settings-table", SettingsTable)
