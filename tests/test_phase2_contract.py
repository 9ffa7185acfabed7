"""The typed phase-2 contract: one list of statistic names shared with the C kernels, typed reads, the store
passed in at construction, and no string statistic keys across modules."""
import ast
import pathlib
import re

import pytest
import torch

import extagg
from extagg import native
from extagg.errors import UnknownNameError
from extagg.phase2 import Dense, Side, Stat, Store, backend
from extagg.phase2.stats import SIDES_OF, as_stats

ROOT = pathlib.Path(extagg.__file__).parent


def _c_enum(prefix: str) -> list[str]:
    source = (ROOT / "native_kernels.c").read_text()
    body = re.search(r"enum\s*\{\s*(" + prefix + r"_[A-Z_0-9, ]+)\}", source).group(1)
    return [name.strip()[len(prefix) + 1:].lower() for name in body.split(",") if "COUNT" not in name]


def test_side_order_is_the_kernels_output_order():
    """The backend's single list of side statistics, the loader's names and the C enum agree entry by entry."""
    assert [s.value for s in backend.SIDES] == list(native.SIDE_NAMES) == _c_enum("S")


def test_the_c_enum_parser_sees_a_reordering():
    """The check above can fail: a swapped pair in the C source is reported."""
    assert _c_enum("S")[:2] == ["sum", "sq"]
    assert [s.value for s in backend.SIDES] != _c_enum("S")[::-1]


def test_depthwise_outputs_map_onto_statistics():
    covered = {stat for stat, _ in backend._DEPTHWISE.values()}
    assert covered == set(Stat) and set(backend._DEPTHWISE) == set(native.DEPTHWISE_NAMES)


def test_stat_names_convert_at_the_seam_with_suggestions():
    assert as_stats(["sum", Stat.EXTREMES]) == (Stat.SUM, Stat.EXTREMES)
    with pytest.raises(UnknownNameError, match="did you mean 'extremes'"):
        as_stats(["extreme"])
    with pytest.raises(TypeError, match="write"):
        as_stats("sum")


def test_every_stat_has_its_sides():
    assert set(SIDES_OF) == set(Stat) and all(SIDES_OF[s] for s in Stat)


def test_store_is_given_at_construction_and_shared():
    g = torch.randn(1, 1, 3, 2, 2, dtype=torch.float64)
    store = Store(pinned=(g,))
    a, b = Dense(g, store=store), Dense(g, store=store)
    assert a.store is store and a.total_sum() is not None
    assert b.side() is a.side()  # one SideStats for the pinned tensor
    with pytest.raises(AttributeError):
        a.store = Store()  # never set afterwards


def test_no_string_statistic_keys_or_private_imports_across_phase2_modules():
    """Modules of extagg import no private name from another module, and phase 2 indexes no statistic by string."""
    names = {s.value for s in Stat} | {s.value for s in Side}
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
                assert not private, f"{path.relative_to(ROOT)} imports private {private} from {node.module}"
        if path.parent.name == "phase2" and path.name not in ("stats.py", "backend.py"):
            for node in ast.walk(tree):
                if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                    assert node.slice.value not in names, f"{path.name}: [{node.slice.value!r}]"


def _import_graph() -> dict:
    """Module -> the extagg modules it imports (top-level and inside functions), from the source."""
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = ["extagg", *path.relative_to(ROOT).with_suffix("").parts]
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    deps.add(full if full in mods else target)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in mods and d != name and not d.startswith(name + ".")}
    return graph


def _cycles(graph: dict) -> list:
    found, state, stack = [], {}, []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == "open":
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for u in sorted(graph):
        if u not in state:
            visit(u)
    return found


def test_no_import_cycle():
    assert _cycles(_import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_module_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}


@pytest.mark.parametrize("method, profile", [("conv3x3+relu+norm", (1, 0)), ("conv1x1+neg+max", (0, 1)),
                                             ("scaling+sum", (1, -1))])
def test_a_plan_reads_what_its_aggregator_declares_for_its_profile(registry, method, profile):
    """Plan.of composes the pre-filters' sign profiles and keeps the statistics the aggregator's closed form
    declares for that profile (the sweep prefetches exactly those). Guards the ``profile is not None`` test in ``Plan.of`` (flipped, no
    plan would declare reads and every sweep would fall back to lazy statistics)."""
    from extagg.phase2 import Plan

    m = registry.parse(method)
    plan = Plan.of(registry, m)
    spec = registry.aggregators[m.aggregator.name]
    assert plan.profile == profile
    assert plan.reads == as_stats(spec.reads(profile)) and plan.reads
