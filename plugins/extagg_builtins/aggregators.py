"""Built-in aggregators: sum, signed max, signed min, L2 (Frobenius) norm, each with closed forms."""
from __future__ import annotations

import torch

from extagg.plugin import (Aggregator, hookimpl, factored_max, factored_min, factored_norm, factored_sum, reads_max,
                           reads_min, reads_norm, reads_sum)


def _sum(x, dim):
    return x.sum(dim)


def _max(x, dim):
    return x.amax(dim)


def _min(x, dim):
    return x.amin(dim)


def _norm(x, dim):
    return torch.linalg.vector_norm(x, dim=dim)


@hookimpl
def register_aggregators(register):
    register(Aggregator(name="sum", reduce=_sum, closed_form=factored_sum, reads=reads_sum, preserves_nonnegative=True,
                        formula="sum_i c_i", doc="Signed sum."))
    register(Aggregator(name="max", reduce=_max, closed_form=factored_max, reads=reads_max, preserves_nonnegative=True,
                        formula="max_i c_i", doc="Signed maximum."))
    register(Aggregator(name="min", reduce=_min, closed_form=factored_min, reads=reads_min, preserves_nonnegative=True,
                        formula="min_i c_i", doc="Signed minimum."))
    register(Aggregator(name="norm", reduce=_norm, closed_form=factored_norm, reads=reads_norm, nonnegative=True, abs_invariant=True,
                        formula="||c||_2", doc="L2 norm (Frobenius norm of a matrix contribution)."))
