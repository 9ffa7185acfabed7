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
``register_methods`` -> :class:`NamedMethod`, ``register_modifiers`` -> :class:`Modifier`, ``register_metrics`` ->
:class:`Metric` (with :class:`Measure`, :class:`Direction`, :class:`Value`, :class:`Cost`; see
:mod:`extagg.metric_spec` and :mod:`extagg.evaluation.context`). What a plugin
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
from .metric_spec import FLOOR_PREFIX, Cost, Direction, Measure, Metric, Value
from .errors import InputError, UnknownNameError
from .method import Call
from .evaluation.context import seed_of
from .evaluation.difficult import difficult_by_rule
from .evaluation.pointing import center_point, pointing_hit, saliency_point
from .evaluation.randomisation import randomise_module
from .evaluation.similarity import map_similarities, similarities_to, similarity_reference, spearman, ssim

__all__ = [
    "IDENTITY", "REQUIRED", "Aggregator", "Contribution", "Dense", "Extractor", "Factored", "Filter", "LayerCapture",
    "Modifier", "NamedMethod", "Param", "PatchGeometry", "Product", "Profile", "Scaled", "Stat", "apply_profile",
    "compose_profiles", "factored_max", "factored_min", "factored_norm", "factored_sum", "hookimpl", "reads_max",
    "reads_min", "reads_norm", "reads_sum", "Samples", "call_model", "FLOOR_PREFIX", "Cost", "Direction",
    "Measure", "Metric", "Value", "InputError", "UnknownNameError", "Call", "seed_of", "difficult_by_rule", "center_point",
    "pointing_hit", "saliency_point", "randomise_module", "map_similarities", "similarities_to",
    "similarity_reference", "spearman", "ssim",
]
