"""Built-in filters: positive part, absolute value, negative part."""
from __future__ import annotations

import torch

from extagg.plugin import Filter, hookimpl


def negative_part(x: torch.Tensor) -> torch.Tensor:
    return (-x).clamp(min=0)


@hookimpl
def register_filters(register):
    register(Filter(name="relu", fn=torch.relu, sign_profile=(1, 0), formula="max(x, 0)",
                    doc="Positive part (selective filtering)."))
    register(Filter(name="abs", fn=torch.abs, sign_profile=(1, 1), formula="|x|", doc="Absolute value."))
    register(Filter(name="neg", fn=negative_part, sign_profile=(0, 1), formula="max(-x, 0)",
                    doc="Negative part, as a nonnegative number."))
