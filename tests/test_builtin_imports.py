"""The built-in plugins are written like a third-party plugin: from extagg they import only ``extagg.plugin``
(and the top-level ``import extagg`` for the public API such as ``extagg.saliency``), never an internal module.

Guards the plugin surface: a built-in that reaches into ``extagg.errors``, ``extagg.propagation`` or any other
internal module would mean :mod:`extagg.plugin` lacks something a third party also needs. The check is on the
syntax tree (every ``import``, also inside functions), so it cannot be fooled by what happens to be imported.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

BUILTINS = pathlib.Path(__file__).resolve().parents[1] / "plugins" / "extagg_builtins"
ALLOWED = {"extagg", "extagg.plugin"}


def internal_imports(source: str) -> list[str]:
    """The extagg modules (or ``module.name`` pairs) imported by ``source`` other than the allowed ones: ``import
    extagg.x``, ``from extagg.x import y``, ``from extagg import x`` (``x`` a submodule or an internal name other
    than ``plugin``), each with its line number."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "extagg":   # from extagg import plugin: fine; from extagg import errors: not
                names = [f"extagg.{a.name}" for a in node.names if a.name != "plugin"]
            else:
                names = [node.module]
        else:
            continue
        bad += [f"{n} (line {node.lineno})" for n in names
                if (n == "extagg" or n.startswith("extagg.")) and n not in ALLOWED]
    return bad


def builtin_modules() -> list[pathlib.Path]:
    return sorted(BUILTINS.glob("*.py"))


def test_builtins_found():
    names = {p.stem for p in builtin_modules()}
    assert {"__init__", "rules", "rule_bodies", "meta", "multipass", "cams", "extractors"} <= names


@pytest.mark.parametrize("path", builtin_modules(), ids=lambda p: p.name)
def test_builtin_imports_only_the_plugin_api(path):
    assert internal_imports(path.read_text()) == [], f"{path.name} imports extagg internals"


@pytest.mark.parametrize("source, flagged", [
    ("from extagg.errors import InputError\n", ["extagg.errors (line 1)"]),
    ("import extagg.propagation\n", ["extagg.propagation (line 1)"]),
    ("from extagg import errors, plugin\n", ["extagg.errors (line 1)"]),
    ("def f():\n    from extagg.specs import Alias\n", ["extagg.specs (line 2)"]),
    ("import extagg\nfrom extagg.plugin import Rule\nfrom extagg import plugin\nimport extagg_builtins.cams\n", []),
])
def test_checker_flags_internal_imports(source, flagged):
    """The counter-case: a synthetic module importing ``extagg.errors`` (or another internal) is flagged."""
    assert internal_imports(source) == flagged
