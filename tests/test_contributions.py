"""Closed forms equal the materialised definition for every sign profile, on dense and factored contributions."""
import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from strategies import factored, signed

from extagg.contributions import (Dense, Factored, PatchGeometry, Scaled, apply_profile, compose_profiles, factored_max,
                                  factored_min, factored_norm, factored_sum)

PROFILES = list(itertools.product([-1, 0, 1], repeat=2))
REDUCE = {factored_sum: lambda c: c.sum(2), factored_norm: lambda c: c.pow(2).sum(2).sqrt(),
          factored_max: lambda c: c.amax(2), factored_min: lambda c: c.amin(2)}


@given(c=factored(), profile=st.sampled_from(PROFILES), form=st.sampled_from(list(REDUCE)))
def test_closed_forms_on_factored_equal_materialised(c, profile, form):
    want = REDUCE[form](apply_profile(c.dense().values, profile))
    torch.testing.assert_close(form(c, profile), want, rtol=1e-10, atol=1e-12)


@given(seed=st.integers(0, 999), profile=st.sampled_from(PROFILES), form=st.sampled_from(list(REDUCE)),
       data=st.data())
def test_closed_forms_on_dense_equal_direct_reduction(seed, profile, form, data):
    values = torch.randn(2, 3, 7, 4, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    values[0, 0, :, 0, 0] = 0.0  # a location of zeros
    values = signed(data.draw, values)
    torch.testing.assert_close(form(Dense(values), profile), REDUCE[form](apply_profile(values, profile)),
                               rtol=1e-10, atol=1e-12)


@given(seed=st.integers(0, 999), profile=st.sampled_from(PROFILES), form=st.sampled_from(list(REDUCE)),
       data=st.data())
def test_closed_forms_on_scaled_equal_its_materialised_values(seed, profile, form, data):
    """Scaled's matrix-vector sums equal the reductions of w * x built in full, for any signs of x and w."""
    gen = torch.Generator().manual_seed(seed)
    x = signed(data.draw, torch.randn(2, 5, 4, 3, generator=gen, dtype=torch.float64))
    w = signed(data.draw, torch.randn(2, data.draw(st.integers(1, 3)), 5, generator=gen, dtype=torch.float64))
    values = x[:, None] * w[..., None, None]
    torch.testing.assert_close(form(Scaled(x, w), profile), REDUCE[form](apply_profile(values, profile)),
                               rtol=1e-10, atol=1e-12)


def test_scaled_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"x \(N, C, h, w\) and w \(N, T, C\), got \(1, 4, 2, 2\) and \(1, 1, 3\)"):
        Scaled(torch.ones(1, 4, 2, 2), torch.ones(1, 1, 3))


@pytest.mark.parametrize("first,then", list(itertools.product(PROFILES, repeat=2)))
def test_profile_composition(first, then):
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    assert torch.equal(apply_profile(apply_profile(x, first), then), apply_profile(x, compose_profiles(first, then)))


def test_materialised_factored_is_the_conv_weight_gradient_summand():
    """sum_u g_u p_u^T equals autograd's weight gradient of a real strided, dilated, grouped conv."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2).double()
    x = torch.randn(1, 4, 9, 9, dtype=torch.float64)
    y = conv(x)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    c = Factored(g[:, None], x, PatchGeometry.of_conv(conv))
    summed = c.dense().values.sum((3, 4))[0, 0].reshape(2, 3, 2 * 9)  # (block, out per block, patch per block)
    torch.testing.assert_close(summed.reshape(6, 2, 3, 3), conv.weight.grad)
    # counter-case: the same sum over a mirrored input is not the weight gradient
    mirrored = Factored(g[:, None], x.flip(-1), PatchGeometry.of_conv(conv)).dense().values.sum((3, 4))[0, 0]
    assert not torch.allclose(mirrored.reshape(6, 2, 3, 3), conv.weight.grad)


def _fixed_contributions():
    """One factored, one dense and one scaled contribution with their materialised values."""
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(2, 2, 4, 5, 6, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 6, 5, 6, generator=gen, dtype=torch.float64)
    f = Factored(g, x, PatchGeometry.identity(3))
    values = torch.randn(2, 3, 7, 4, 5, generator=gen, dtype=torch.float64)
    sx, w = torch.randn(2, 5, 4, 3, generator=gen, dtype=torch.float64), torch.randn(2, 2, 5, generator=gen,
                                                                                       dtype=torch.float64)
    return {"factored": (f, f.dense().values), "dense": (Dense(values), values),
            "scaled": (Scaled(sx, w), sx[:, None] * w[..., None, None])}


@pytest.mark.parametrize("kind", ["factored", "dense", "scaled"])
@pytest.mark.parametrize("form", list(REDUCE), ids=lambda f: f.__name__)
def test_closed_forms_counter_case_another_profile_or_input(kind, form):
    """Counter-case of the three equivalences above: a closed form for one sign profile against the reduction
    for another profile (where those differ), or against the reduction of perturbed values, is refused."""
    c, values = _fixed_contributions()[kind]
    compared = perturbed = 0
    for p in PROFILES:
        got = form(c, p)
        torch.testing.assert_close(got, REDUCE[form](apply_profile(values, p)), rtol=1e-10, atol=1e-12)
        truth, rolled = (REDUCE[form](apply_profile(v, p)) for v in (values, values.roll(1, -1)))
        if not torch.allclose(rolled, truth, rtol=1e-6, atol=1e-9):  # (0, 0), or max of x <= 0, give constants
            perturbed += 1
            with pytest.raises(AssertionError):
                torch.testing.assert_close(got, rolled, rtol=1e-10, atol=1e-12)
        for q in PROFILES:
            other = REDUCE[form](apply_profile(values, q))
            if not torch.allclose(other, REDUCE[form](apply_profile(values, p)), rtol=1e-6, atol=1e-9):
                compared += 1
                with pytest.raises(AssertionError):
                    torch.testing.assert_close(got, other, rtol=1e-10, atol=1e-12)
    assert compared >= 30 and perturbed >= 4


def test_profile_composition_counter_case():
    """Counter-case of test_profile_composition: composing in the other order is refused for some pairs (e.g.
    relu then neg is not neg then relu), so the equality there is not true of any two profiles."""
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    swapped = [(a, b) for a, b in itertools.product(PROFILES, repeat=2)
               if not torch.equal(apply_profile(apply_profile(x, a), b), apply_profile(x, compose_profiles(b, a)))]
    assert len(swapped) >= 10
    assert ((1, 0), (-1, 0)) in swapped or ((1, 0), (0, -1)) in swapped


def test_the_default_geometry_is_an_unpadded_convolution():
    """``PatchGeometry`` with only a kernel reads the input without padding (a 'valid' convolution): its
    materialised contribution summed over locations is the weight gradient of such a conv. Guards the default
    ``padding`` of ``PatchGeometry`` (1 instead of 0 shifts every patch)."""
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 4, 3, bias=False).double()
    x = torch.randn(1, 3, 7, 7, dtype=torch.float64)
    y = conv(x)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    c = Factored(g[:, None], x, PatchGeometry(kernel=(3, 3)))
    torch.testing.assert_close(c.dense().values.sum((3, 4))[0, 0].reshape(4, 3, 3, 3), conv.weight.grad)
