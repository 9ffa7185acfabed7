"""Ranks computed once and shared: average ranks against scipy, a ranked side paired with many, the ranks of a
rearranged map as rearranged ranks (how the floors' partners are ranked), and the smooth-noise surrogate as a
rearrangement of its map. Each equality is bit for bit, with a counter-case where it does not hold."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata

from extagg.errors import InputError
from extagg.evaluation.context import rearranged, surrogate_order, surrogates
from extagg.evaluation.similarity import (average_ranks, rank_correlation, ranked, rearranged_side,
                                          similarities_to, similarity_reference, spearman)


@st.composite
def tied_rows(draw, dtype=torch.float64):
    """(rows, P) values drawn from a few levels, so ties are common (and zeros, as after a ReLU)."""
    rows, p = draw(st.integers(1, 4)), draw(st.integers(1, 40))
    levels = draw(st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=1, max_size=6))
    picks = draw(st.lists(st.integers(0, len(levels) - 1), min_size=rows * p, max_size=rows * p))
    return torch.tensor([levels[i] for i in picks], dtype=dtype).reshape(rows, p)


@settings(max_examples=80, deadline=None)
@given(tied_rows(), st.sampled_from([torch.float64, torch.float32]))
def test_average_ranks_are_scipys_with_ties(x, dtype):
    """Ties take their average rank, in the input's float dtype; ordinal ranks differ wherever a tie exists."""
    x = x.to(dtype)
    got = average_ranks(x)
    assert got.dtype == dtype
    expected = np.stack([rankdata(row.numpy()) for row in x])
    assert np.array_equal(got.double().numpy(), expected)
    ordinal = np.stack([rankdata(row.numpy(), method="ordinal") for row in x])
    has_ties = any(len(set(row.tolist())) < len(row) for row in x)
    assert np.array_equal(got.double().numpy(), ordinal) == (not has_ties)


def test_average_ranks_of_integers_and_nans():
    """Integers rank as floats (float64); NaNs rank after every number, each its own group, in order of
    appearance (as scipy's rankdata with nan_policy='propagate' would order them before returning NaN)."""
    assert torch.equal(average_ranks(torch.tensor([[3, 1, 3, 2]])), torch.tensor([[3.5, 1.0, 3.5, 2.0]],
                                                                                 dtype=torch.float64))
    nan = float("nan")
    assert average_ranks(torch.tensor([nan, 2.0, nan, 2.0, 1.0])).tolist() == [4.0, 2.5, 5.0, 2.5, 1.0]


@settings(max_examples=60, deadline=None)
@given(tied_rows(), st.randoms(use_true_random=False))
def test_ranks_of_a_rearranged_map_are_its_ranks_rearranged(x, rnd):
    """ranked(x[order]) == rearranged_side(ranked(x), order) for a permutation; so the Spearman of a map and its
    rearrangement needs one sort. With a pixel repeated (not a permutation) the values change, and so do the
    ties: the shortcut would be wrong there, and the test sees it."""
    x = x.reshape(x.shape[0], 1, -1)
    p = x.shape[-1]
    order = torch.stack([torch.tensor(rnd.sample(range(p), p)) for _ in range(x.shape[0])]).reshape(x.shape[0], 1, p)
    side = ranked(x, ndim=1)
    moved = x.gather(-1, order)
    direct, shared = ranked(moved, ndim=1), rearranged_side(side, order)
    assert torch.equal(direct[0], shared[0]) and torch.equal(direct[1], shared[1])
    assert torch.equal(rank_correlation(side, shared).nan_to_num(9), spearman(x, moved, ndim=1).nan_to_num(9))
    if p >= 2 and len(set(x[0, 0].tolist())) == p:  # distinct values: copying one pixel over another makes a tie
        bad = order.clone()
        bad[0, 0, 1] = bad[0, 0, 0]
        assert not torch.equal(ranked(x.gather(-1, bad), ndim=1)[0], rearranged_side(side, bad)[0])


def test_ranked_checks_its_input():
    with pytest.raises(InputError, match="at least 2 dimensions"):
        ranked(torch.rand(5))


def _maps(n=6, side=24):
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 1, 6, 6, generator=g)
    m = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    m[0] = m[0].clamp(min=0.5)  # a map with a large tie (as after a ReLU)
    return m


def test_a_surrogate_is_its_map_rearranged():
    """surrogates(maps) == rearranged(maps, surrogate_order(maps)); each order is a permutation of the pixels."""
    m = _maps()
    order = surrogate_order(m, list(range(len(m))))
    assert torch.equal(surrogates(m, list(range(len(m)))), rearranged(m, order))
    assert torch.equal(order.sort(-1).values, torch.arange(m[0].numel()).expand_as(order))
    assert not torch.equal(order, surrogate_order(m, list(range(1, len(m) + 1))))  # the seed matters


def test_similarities_to_a_rearrangement_rank_it_by_its_order():
    """similarities_to(ref, s, order=o) gives the numbers of ranking s itself, bit for bit; an order that is not
    the one s was made with gives other Spearman numbers (so the order is what is used)."""
    m = _maps()
    ref = similarity_reference(m, hog_cell=4)
    order = surrogate_order(m, list(range(len(m))))
    s = rearranged(m, order)
    direct, shared = similarities_to(ref, s), similarities_to(ref, s, order=order)
    assert direct.keys() == shared.keys()
    for k in direct:
        assert torch.equal(direct[k].nan_to_num(9), shared[k].nan_to_num(9)), k
    wrong = similarities_to(ref, s, order=surrogate_order(m, list(range(7, 7 + len(m)))))
    assert not torch.equal(wrong["spearman"], direct["spearman"])


def test_similarities_to_other_rows_of_the_reference_reuse_them():
    """similarities_to(ref, maps[rows], rows=rows) gives the numbers of computing maps[rows] afresh, bit for bit
    (the cross-image floor pairs each map with another image's); wrong rows give other numbers."""
    m = _maps()
    ref = similarity_reference(m, hog_cell=4)
    rows = torch.arange(len(m)).roll(-1)
    direct, shared = similarities_to(ref, m[rows]), similarities_to(ref, m[rows], rows=rows)
    for k in direct:
        assert torch.equal(direct[k].nan_to_num(9), shared[k].nan_to_num(9)), k
    wrong = similarities_to(ref, m[rows], rows=rows.roll(1))
    assert all(not torch.equal(wrong[k], direct[k]) for k in ("spearman", "ssim"))


def test_ranks_and_correlations_in_row_chunks_are_the_whole_computation(monkeypatch):
    """Spearman ranks and Pearson sums are taken a few rows at a time (bounded memory): bit for bit the numbers
    of all rows at once. A chunk that split a row would rank half a map; the counter-case shows that differs."""
    import extagg.evaluation.similarity as similarity

    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(7, 5, 9, 11, generator=g), torch.rand(7, 5, 9, 11, generator=g)
    a[2, 1] = 0.25  # a constant map (NaN)
    whole = (spearman(a, b), similarity.pearson(a.flatten(-2).double(), b.flatten(-2).double()), ranked(a)[0])
    monkeypatch.setattr(similarity, "RANK_CHUNK", 3 * 99)  # three rows per chunk, a partial chunk at the end
    chunked = (spearman(a, b), similarity.pearson(a.flatten(-2).double(), b.flatten(-2).double()), ranked(a)[0])
    for w, c in zip(whole, chunked):
        assert torch.equal(w.nan_to_num(9), c.nan_to_num(9))
    half = average_ranks(a.flatten(-2)[..., :50].double())
    assert not torch.equal(half, whole[2][..., :50])
