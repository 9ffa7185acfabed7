"""The design space: enumeration, redundancy rules, wildcards, order."""
import itertools

from extagg.space import natural_key

from tests.conftest import LazyBuiltins

REG = LazyBuiltins()
BUILTIN_EXTRACTORS = ["bias", "scaling", "pooled-scaling", "conv1x1", "conv3x3", "dwconv", "conv", "bn-scale", "bn-bias"]


def _builtin(names):
    def builtin_part(name):
        return any(name in table and table[name].origin.distribution == "extagg" for table in REG.components.values())

    return [n for n in names if n.split("+")[0] in BUILTIN_EXTRACTORS and all(
        builtin_part(part.split("(")[0]) for part in n.split("+"))]


def test_space_is_the_product_minus_provable_no_ops():
    filters, aggs = ["relu", "abs", "neg"], ["sum", "max", "min", "norm"]
    expected = set()
    for ext, pre, agg, post in itertools.product(BUILTIN_EXTRACTORS, [None, *filters], aggs, [None, *filters]):
        if pre == "abs" and agg == "norm":
            continue  # |.| before a norm changes nothing
        nonneg = agg == "norm" or pre in ("relu", "abs", "neg")
        if post is not None and nonneg:
            continue  # relu/abs of a nonnegative map is itself; neg of it is zero
        expected.add("+".join(x for x in (ext, pre, agg, post) if x))
    assert set(_builtin(REG.methods())) == expected


def test_every_named_method_is_in_the_space():
    space = set(REG.methods(["*", "*:*"]))   # named methods with a modifier (guided-backprop) are in "*:*"
    for name in REG.aliases:
        assert str(REG.parse(name)) in space


def test_wildcards_and_excludes():
    got = REG.methods("scaling+*", exclude="*+norm*")
    assert got and all(m.startswith("scaling+") and "+norm" not in m for m in got)
    assert REG.methods("gradcam") == ["pooled-scaling+sum+relu"]
    assert set(REG.methods(["bias+sum", "bias+max"])) == {"bias+sum", "bias+max"}
    assert REG.methods("no-such*") == []


def test_order_is_natural_and_deterministic():
    got = REG.methods()
    assert got == sorted(got, key=natural_key) == REG.methods()
    assert natural_key("conv3x3") < natural_key("conv11x11")


def test_every_enumerated_method_parses_to_itself():
    for m in REG.methods():
        assert str(REG.parse(m)) == m


def test_components_with_required_parameters_are_not_enumerated():
    """A plugin aggregator that needs a parameter would otherwise appear as an unparseable 'scaling+q'."""
    import types

    from extagg import Registry, hookimpl, make_plugin_manager
    from extagg.specs import Aggregator, Param

    mod = types.ModuleType("q_plugin")
    mod.register_aggregators = hookimpl(lambda register: register(
        Aggregator(name="q", reduce=lambda c, dim, p: c.quantile(p, dim=dim), params=[Param("p", float)])))
    reg = Registry.from_plugin_manager(make_plugin_manager(autoload=False, extra=[mod]))
    assert "q" in reg.aggregators and not reg.methods("*+q*")
    for m in reg.methods():
        reg.parse(m)
