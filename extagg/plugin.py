"""The one import place for plugin authors: records, the ``hookimpl`` marker, the contribution forms, the
statistics, and the closed-form helpers.

::

    from extagg.plugin import Aggregator, Param, hookimpl, factored_sum, reads_sum

    @hookimpl
    def register_aggregators(register):
        register(Aggregator(name="total", reduce=lambda x, dim: x.sum(dim),
                            closed_form=factored_sum, reads=reads_sum))

Hooks (:mod:`extagg.hookspecs`) each receive a ``register`` callback for one record type: ``register_extractors``
-> :class:`Extractor`, ``register_filters`` -> :class:`Filter`, ``register_aggregators`` -> :class:`Aggregator`,
``register_methods`` -> :class:`NamedMethod`, ``register_modifiers`` -> :class:`Modifier`. What a plugin
registers is validated when it registers, and what its code returns is checked when it runs; either failure
names the component and its plugin. A modifier that runs the model itself (an SGD step) calls
:func:`call_model`, which passes the saliency call's ``forward_kwargs`` on. The older paths (``extagg.specs``, ``extagg.contributions``,
``extagg.closed_forms``) keep working.
"""
from .capture import LayerCapture
from .hookspecs import hookimpl
from .phase2 import (IDENTITY, Contribution, Dense, Factored, PatchGeometry, Product, Profile, Scaled, Stat,
                     apply_profile, compose_profiles, factored_max, factored_min, factored_norm, factored_sum,
                     reads_max, reads_min, reads_norm, reads_sum)
from .targets import call_model
from .specs import REQUIRED, Aggregator, Extractor, Filter, Modifier, NamedMethod, Param, Samples

__all__ = [
    "IDENTITY", "REQUIRED", "Aggregator", "Contribution", "Dense", "Extractor", "Factored", "Filter", "LayerCapture",
    "Modifier", "NamedMethod", "Param", "PatchGeometry", "Product", "Profile", "Scaled", "Stat", "apply_profile",
    "compose_profiles", "factored_max", "factored_min", "factored_norm", "factored_sum", "hookimpl", "reads_max",
    "reads_min", "reads_norm", "reads_sum", "Samples", "call_model",
]
