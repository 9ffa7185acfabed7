"""Phase 2 behind one typed contract: from a layer's contributions to its maps.

The data path, one module per step:

* :mod:`.stats`: the typed names, :class:`Stat` (what a contribution computes; what closed forms ``read``) and
  :class:`Side` (per-tensor statistics the forms are built from).
* :mod:`.contribution`: the :class:`Contribution` protocol; the forms implement it, each in its own module:
  :mod:`.dense` (:class:`Dense`), :mod:`.scaled` (:class:`Scaled`), :mod:`.product` (:class:`Product`),
  :mod:`.factored` (:class:`Factored`, :class:`PatchGeometry`; depthwise ones via :mod:`.depthwise`).
* :mod:`.sides`: lazy side statistics and the per-layer :class:`Store` shared by a layer's forms.
* :mod:`.pooling`: patch pooling; :mod:`.sweeps`: the PyTorch chunked sweeps.
* :mod:`.backend`: native kernels or PyTorch behind one signature per operation.
* :mod:`.closed_forms`: sign profiles and the built-in aggregators' closed forms with their ``reads``.
* :mod:`.evaluate`: :func:`evaluate_layer`, the step :func:`extagg.saliency` calls per layer, with the checks
  of what plugin code returns.
"""
from .closed_forms import (IDENTITY, Profile, apply_profile, compose_profiles, factored_max, factored_min,
                           factored_norm, factored_sum, reads_max, reads_min, reads_norm, reads_sum)
from .contribution import Contribution
from .dense import Dense
from .evaluate import Plan, evaluate_layer
from .factored import Factored, PatchGeometry
from .product import Product
from .scaled import Scaled
from .sides import Store
from .stats import Side, Stat

__all__ = [
    "IDENTITY", "Contribution", "Dense", "Factored", "PatchGeometry", "Plan", "Product", "Profile", "Scaled", "Side",
    "Stat", "Store", "apply_profile", "compose_profiles", "evaluate_layer", "factored_max", "factored_min",
    "factored_norm", "factored_sum", "reads_max", "reads_min", "reads_norm", "reads_sum",
]
