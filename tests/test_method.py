"""Method strings: canonical form, round trips, aliases, parameters, and errors that point at the problem."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extagg.errors import InvalidMethodError, MethodSyntaxError, UnknownNameError
from tests.strategies import method_texts

from tests.conftest import LazyBuiltins

REG = LazyBuiltins()


@given(text=method_texts(REG))
def test_round_trip_and_canonical_form(text):
    m = REG.parse(text)
    canonical = str(m)
    assert REG.parse(canonical) == m
    assert str(REG.parse(canonical)) == canonical
    assert canonical == canonical.lower() and " " not in canonical


@given(text=method_texts(REG), data=st.data())
def test_case_and_whitespace_do_not_matter(text, data):
    noisy = "".join(c.upper() if data.draw(st.booleans()) else c for c in text).replace("+", " + ")
    assert REG.parse(noisy) == REG.parse(text)


def test_order_of_filter_and_aggregator_matters():
    a, b = REG.parse("scaling+relu+norm"), REG.parse("scaling+norm+relu")
    assert a != b and a.pre[0].name == "relu" and b.post[0].name == "relu"
    assert REG.parse("scaling+sum+relu").post and not REG.parse("scaling+relu+sum").post


@pytest.mark.parametrize("alias,expansion", [
    ("gradient", "bias+abs+max"), ("gradient-sum", "bias+sum"), ("linear-approx", "scaling+sum"),
    ("normgrad", "conv1x1+norm"), ("selective-normgrad", "scaling+relu+norm"), ("normgrad-conv", "conv+norm"),
    ("gradcam", "pooled-scaling+sum+relu"),
])
def test_named_methods_expand_to_one_composition(alias, expansion):
    m = REG.parse(alias)
    assert str(m) == expansion and m.alias == alias
    assert m == REG.parse(expansion)


def test_named_method_takes_extra_post_filters():
    assert str(REG.parse("linear-approx+abs")) == "scaling+sum+abs"


def test_parameters_are_canonicalised():
    assert str(REG.parse("dwconv(k=3)+norm")) == "dwconv+norm"  # default dropped
    assert str(REG.parse("DWConv( k = 5 )+norm")) == "dwconv(k=5)+norm"
    assert str(REG.parse("iconv(k=7)+sum")) == "iconv(k=7)+sum"


@pytest.mark.parametrize("text,problem", [
    ("iconv+norm", "needs parameter 'k'"),
    ("iconv(k=4)+norm", "odd"),
    ("dwconv(k=2.5)+norm", "must be int"),
    ("scaling", "no aggregator"),
    ("scaling+sum+norm", "more than one aggregator"),
    ("sum+scaling", "starts with an extractor"),
    ("scaling+conv1x1+sum", "can only come first"),
    ("gradcam(k=3)", "takes no parameters"),
])
def test_invalid_compositions_are_explained(text, problem):
    with pytest.raises(InvalidMethodError, match=problem):
        REG.parse(text)


@pytest.mark.parametrize("text,position", [
    ("scaling++sum", 8), ("scaling+sum)", 11), ("scaling(k=)+sum", 10), ("", 0), ("scaling sum", 8),
    ("dwconv(k=3,k=5)+sum", 11), ("3x3+sum", 0),
])
def test_syntax_errors_point_at_the_position(text, position):
    with pytest.raises(MethodSyntaxError) as info:
        REG.parse(text)
    assert info.value.position == position
    assert str(info.value).splitlines()[-1].index("^") == position + 2


def test_unknown_names_suggest_close_matches():
    with pytest.raises(UnknownNameError) as info:
        REG.parse("scaling+summ+relu")
    err = info.value
    assert isinstance(err, LookupError) and err.name == "summ" and "sum" in err.suggestions
    assert "did you mean 'sum'" in str(err) and "available:" in str(err)
    with pytest.raises(UnknownNameError, match="did you mean 'scaling'"):
        REG.parse("scalling+sum")
    with pytest.raises(UnknownNameError, match="parameter of extractor 'dwconv'.*did you mean 'k'"):
        REG.parse("dwconv(kk=3)+sum")


def test_non_string_method_is_a_type_error():
    with pytest.raises(TypeError, match="must be a string"):
        REG.parse(42)
