"""Meta-tests that keep the documentation honest (in the spirit of datasette's docs tests).

* every hookspec has a ``## name(args)`` heading in docs/plugins/hooks.md, and every such example runs;
* docs/components.md lists exactly the built-in components, with their real parameters, profiles and expansions;
* every method string quoted in the docs names components that exist;
* the tutorial's code blocks are copied verbatim from examples/extagg-hello.
"""
from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import types
from pathlib import Path

import pytest

import extagg
from extagg.metric_spec import FLOOR_PREFIX
import rules_support
from extagg import hookspecs
from extagg.method import format_value

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HELLO = ROOT / "examples" / "extagg-hello"
HELLO_INIT = HELLO / "src" / "extagg_hello" / "__init__.py"
HELLO_RULES = HELLO / "src" / "extagg_hello" / "rules.py"

KIND_OF_HEADING = {
    "Extractors": "extractor", "Filters": "filter", "Aggregators": "aggregator",
    "Named methods": "method", "Modifiers": "modifier", "Metrics": "metric",
}


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def sections(text: str, level: str = "## ") -> dict[str, str]:
    """``{heading: body}`` for the headings of one level (fenced code is not mistaken for headings)."""
    out: dict[str, str] = {}
    current, lines, fenced = None, [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith(level):
            if current is not None:
                out[current] = "\n".join(lines)
            current, lines = line[len(level):].strip(), []
        elif current is not None:
            lines.append(line)
    if current is not None:
        out[current] = "\n".join(lines)
    return out


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def table_rows(body: str) -> list[list[str]]:
    """Cells of the body rows of the markdown tables in ``body`` (header and rule rows dropped)."""
    rows = []
    lines = [line for line in body.splitlines() if line.startswith("|")]
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if set("".join(cells)) <= set("-: ") or (i + 1 < len(lines) and set(lines[i + 1]) <= set("|-: ")):
            continue
        rows.append(cells)
    return rows


def hookspec_names() -> list[str]:
    return [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(fn, f"{hookspecs.PROJECT}_spec")]


def load_hello():
    """The example plugin module, imported from its source file (it need not be installed)."""
    if "extagg_hello" in sys.modules:
        return sys.modules["extagg_hello"]
    spec = importlib.util.spec_from_file_location("extagg_hello_docs", HELLO_INIT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def builtins():
    """The built-in components only: extagg's own entry points, nothing third-party."""
    return extagg.Registry.from_plugin_manager(rules_support.plugin_manager(autoload=False))


# ----------------------------------------------------------------------------- hooks.md
def test_hookspecs_found():
    assert set(hookspec_names()) == set(hookspecs.HOOK_KINDS)


@pytest.mark.parametrize("hook", hookspec_names())
def test_hook_has_a_heading(hook):
    """Every hook is documented under a heading written like its signature, e.g. ``register_filters(register)``."""
    args = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert f"{hook}({args})" in sections(read(DOCS / "plugins" / "hooks.md"))


def test_hooks_md_documents_no_stale_hooks():
    headings = [h for h in sections(read(DOCS / "plugins" / "hooks.md")) if "(" in h]
    assert sorted(h.split("(")[0] for h in headings) == sorted(hookspec_names())


@pytest.mark.parametrize("hook", hookspec_names())
def test_hook_example_runs(hook):
    """The example under each hook's heading is a complete script: it runs, and it implements that hook."""
    args = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    blocks = code_blocks(sections(read(DOCS / "plugins" / "hooks.md"))[f"{hook}({args})"], "python")
    assert len(blocks) == 1, f"{hook}: expected one runnable python example"
    assert f"def {hook}(" in blocks[0]
    name = f"extagg_docs_example_{hook}"
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        exec(compile(blocks[0], f"docs/plugins/hooks.md:{hook}", "exec"), module.__dict__)
    finally:
        del sys.modules[name]


# ----------------------------------------------------------------------------- components.md
def component_tables() -> dict[str, dict[str, list[str]]]:
    """``{kind: {name: cells}}`` from the tables of docs/components.md."""
    out = {}
    for heading, body in sections(read(DOCS / "components.md")).items():
        kind = KIND_OF_HEADING.get(heading)
        if kind is None:
            continue
        rows = {}
        for cells in table_rows(body):
            m = re.fullmatch(r"`([a-z][a-z0-9_-]*)`", cells[0])
            assert m, f"{heading}: the first cell of each row is a `name`, got {cells[0]!r}"
            assert m.group(1) not in rows, f"{heading}: {m.group(1)} listed twice"
            rows[m.group(1)] = cells
        out[kind] = rows
    return out


def test_components_md_has_a_section_per_kind():
    assert set(component_tables()) == set(hookspecs.HOOK_KINDS.values())


@pytest.mark.parametrize("kind", sorted(hookspecs.HOOK_KINDS.values()))
def test_components_md_lists_exactly_the_builtins(builtins, kind):
    """Missing names fail (a new builtin needs a row); extra names fail (a row for something that does not exist)."""
    registered = {n for n, spec in builtins.components[kind].items() if spec.origin.distribution == "extagg"}
    documented = set(component_tables()[kind])
    assert sorted(registered - documented) == [], f"builtin {kind}s missing from docs/components.md"
    assert sorted(documented - registered) == [], f"docs/components.md lists {kind}s that do not exist"


def test_components_md_parameters(builtins):
    """The parameters column names every parameter with its default (``k=3``) or says it is required."""
    for kind, rows in component_tables().items():
        if kind == "method":
            continue
        for name, cells in rows.items():
            params = builtins.components[kind][name].params
            cell = cells[1]
            if not params:
                assert cell == "-", f"{kind} {name} has no parameters, docs say {cell!r}"
            for p in params:
                if p.required:
                    assert re.search(rf"`{p.name}` \({p.type.__name__}, required", cell), (kind, name, cell)
                else:
                    assert f"`{p.name}={format_value(p.default)}` ({p.type.__name__}" in cell, (kind, name, cell)


def test_components_md_expansions(builtins):
    for name, cells in component_tables()["method"].items():
        assert cells[1] == f"`{builtins.aliases[name].expansion}`", name


def test_components_md_sign_profiles(builtins):
    for name, cells in component_tables()["filter"].items():
        profile = builtins.filters[name].sign_profile
        assert cells[3] == ("none" if profile is None else f"`({profile[0]}, {profile[1]})`"), name


def test_components_md_aggregator_properties(builtins):
    for name, cells in component_tables()["aggregator"].items():
        spec = builtins.aggregators[name]
        claimed = {p.strip() for p in cells[4].split(",") if p.strip() != "-"}
        actual = {flag for flag in ("nonnegative", "preserves_nonnegative", "abs_invariant") if getattr(spec, flag)}
        assert claimed == actual, name
        assert (cells[3] == "-") == (spec.closed_form is None), name


# ----------------------------------------------------------------------------- method strings in prose
_COMPONENT = r"[A-Za-z][\w-]*(?:\([^()`]*\))?"
_METHOD = re.compile(rf"{_COMPONENT}(?:\s*[:+]\s*{_COMPONENT})+")
PLACEHOLDERS = {
    "modifier:extractor+pre-filters+aggregator+post-filters",
    "name(...):method",
}
DOC_FILES = ["index.md", "concepts.md", "components.md", "propagation_rules.md", "cam_family.md",
             "plugins/tutorial.md", "plugins/hooks.md", "multipass_and_tokens.md"]


def quoted_method_strings(text: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # inline code only
    return [s for s in re.findall(r"`([^`\n]+)`", text) if _METHOD.fullmatch(s) and s not in PLACEHOLDERS
            and not s.startswith(FLOOR_PREFIX)]  # a metric's floor subset, not a method


@pytest.fixture(scope="module")
def docs_registry():
    """The built-ins, the example plugin and the hooks.md examples' components: everything the docs may name."""
    spec = importlib.util.spec_from_file_location("extagg_hello_rules_docs", HELLO_RULES)
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)
    plugins = [load_hello(), rules]
    for hook in hookspec_names():
        args = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
        block = code_blocks(sections(read(DOCS / "plugins" / "hooks.md"))[f"{hook}({args})"], "python")[0]
        module = types.ModuleType(f"extagg_docs_names_{hook}")
        # only the definitions: cut the script at the point where it builds a registry
        exec(block.split("\nregistry = ")[0], module.__dict__)
        plugins.append(module)
    return extagg.Registry.from_plugin_manager(rules_support.plugin_manager(autoload=False, extra=plugins))


def test_quoted_method_strings_are_found():
    found = quoted_method_strings(read(DOCS / "concepts.md"))
    assert "scaling+relu+norm" in found and "meta(lr=0.01):normgrad" in found


@pytest.mark.parametrize("doc", DOC_FILES)
def test_method_strings_in_docs_name_real_components(docs_registry, doc):
    """Every `a+b` in the docs' prose names existing components and parameters (fragments like `abs+max` too)."""
    bad = []
    for text in quoted_method_strings(read(DOCS / doc)):
        head = re.split(r"[:+(]", text, maxsplit=1)[0].strip().lower()
        starts = set(docs_registry.extractors) | set(docs_registry.aliases) | set(docs_registry.modifiers)
        candidate = text if head in starts else "bias+" + text
        try:
            docs_registry.parse(candidate)
        except extagg.UnknownNameError as exc:
            bad.append(f"{text!r}: {exc}")
        except extagg.InvalidMethodError:
            pass  # valid names used to show an error (a bad parameter value, two aggregators)
    assert bad == []


# ----------------------------------------------------------------------------- the tutorial
def test_tutorial_python_blocks_are_copied_from_the_example():
    source = read(HELLO_INIT)
    blocks = [b for b in code_blocks(read(DOCS / "plugins" / "tutorial.md"), "python")
              if b.startswith("# src/extagg_hello/__init__.py\n")]
    assert len(blocks) >= 5
    for block in blocks:
        snippet = block.split("\n", 1)[1]
        assert snippet in source, f"tutorial block not found verbatim in {HELLO_INIT}:\n{snippet}"


def test_tutorial_rule_blocks_are_copied_from_the_example():
    """The "Writing a propagation rule" section quotes the example's rule module verbatim, all of its parts."""
    source = read(HELLO_RULES)
    blocks = [b.split("\n", 1)[1] for b in code_blocks(read(DOCS / "plugins" / "tutorial.md"), "python")
              if b.startswith("# src/extagg_hello/rules.py\n")]
    assert len(blocks) >= 4 and "def register_modifiers(register):" in "".join(blocks)
    for snippet in blocks:
        assert snippet in source, f"tutorial block not found verbatim in {HELLO_RULES}:\n{snippet}"


def test_tutorial_quotes_every_hook_implementation_of_the_example():
    text = read(DOCS / "plugins" / "tutorial.md")
    for hook in hookspec_names():
        if f"def {hook}(" in read(HELLO_INIT):
            assert f"def {hook}(register):" in text, hook


def test_tutorial_pyproject_is_the_real_one():
    (block,) = [b for b in code_blocks(read(DOCS / "plugins" / "tutorial.md"), "toml")
                if b.startswith("# pyproject.toml\n")]
    assert block.split("\n", 1)[1] == read(HELLO / "pyproject.toml")


# ----------------------------------------------------------------------------- index.md
def test_index_example_runs():
    pytest.importorskip("torchvision")
    (block,) = code_blocks(read(DOCS / "index.md"), "python")[:1]
    namespace: dict = {}
    exec(compile(block, "docs/index.md", "exec"), namespace)
    assert namespace["maps"]["normgrad", "layer4"].shape == (2, 1, 2, 2)
