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

Propagation rules (guided backprop, LRP, ...) are modifiers: a :class:`Modifier` whose ``fn(model, images,
targets, **params)`` returns ``rules_installed(model, rule)`` for a :class:`Rule`, so that ``myrule:gradcam`` runs
the method with the rule's backward for one pass. A :class:`Rule` has a ``handler(layer_name, module)`` asked once
per leaf module (and per module of ``Rule.units`` whatever its children) before anything is installed, returning

* ``None``: not the rule's business, the module keeps its ordinary gradient (refused functions it calls still raise);
* :data:`KEEP`: a module the rule knows and leaves with its ordinary gradient (functions it calls are trusted);
* :class:`Swap` ``(prepare, backward)``: ``state = prepare(module, x, y)`` in the forward pass (under
  ``no_grad``, on detached tensors), then ``backward(grad_y, *state)`` *replaces* the gradient sent to ``x``;
* :class:`Modulate` ``(prepare, backward)``: ``backward(grad_y, *state)`` transforms the gradient arriving at
  ``y`` and the module's own backward then runs (LRP-epsilon's ``g * z / (z + eps sign z)``);
* or raising :class:`UnsupportedLayerError` (:func:`refuse_modules` words it) naming the layer.

``Rule.refused_functions`` (``{torch function: why}``) are the functional calls (``torch.relu`` in a ``forward``)
that cannot carry the rule; calling one while the model runs outside a handled module raises
:class:`UnsupportedLayerError` naming the calling module. ``backward`` must use vmap-able torch operations
(several targets are back-propagated at once). The forward output is unchanged bit for bit; the hooks are removed
when the pass ends, also on error; two rules deciding the same module in one method is an
:class:`~extagg.errors.InvalidMethodError`. Register the modifier with ``stateless=True`` (a rule writes no tensor).
The built-in rules (``extagg_builtins.rule_bodies``) are written with exactly these names.

Helpers the built-in plugins share are exported too: :func:`class_logits` (``(N, C)`` class scores of a model
output), :func:`noise`, :class:`LazyWeights`, :func:`count_problem`, :func:`chunk_problem` (sampling modifiers,
:mod:`extagg.multipass`), and the perturbation machinery of the faithfulness metrics (:class:`Forwards`,
:func:`replaced`, :func:`replaced_at`, ...; :mod:`extagg.evaluation.perturbation`).
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
from .evaluation.common import logits as class_scores
from .evaluation.context import floats, rearranged, seed_of, values_of
from .evaluation.difficult import difficult_by_rule
from .evaluation.perturbation import (Forwards, feature_ranks, group_ranks, linear_imputation, replaced, replaced_at,
                                      spearman_ties, unit_trapezoid)
from .evaluation.pointing import center_point, pointing_hit, saliency_point
from .evaluation.randomisation import randomise_module
from .multipass import LazyWeights, chunk_problem, count_problem, noise
from .propagation import KEEP, Modulate, Rule, Swap, UnsupportedLayerError, refuse_modules, rules_installed
from .targets import class_logits
from .evaluation.similarity import (average_ranks, map_similarities, pearson, rank_correlation, ranked,
                                    rearranged_side, similarities_to, similarity_reference, spearman, ssim)

__all__ = [
    "IDENTITY", "REQUIRED", "Aggregator", "Contribution", "Dense", "Extractor", "Factored", "Filter", "LayerCapture",
    "Modifier", "NamedMethod", "Param", "PatchGeometry", "Product", "Profile", "Scaled", "Stat", "apply_profile",
    "compose_profiles", "factored_max", "factored_min", "factored_norm", "factored_sum", "hookimpl", "reads_max",
    "reads_min", "reads_norm", "reads_sum", "Samples", "call_model", "FLOOR_PREFIX", "Cost", "Direction",
    "Measure", "Metric", "Value", "InputError", "UnknownNameError", "Call", "floats", "seed_of", "values_of", "difficult_by_rule",
    "center_point", "pointing_hit", "saliency_point", "randomise_module", "map_similarities", "similarities_to",
    "similarity_reference", "spearman", "ssim", "KEEP", "Modulate", "Rule", "Swap", "UnsupportedLayerError",
    "refuse_modules", "rules_installed", "class_logits", "LazyWeights", "chunk_problem", "count_problem", "noise",
    "Forwards", "average_ranks", "feature_ranks", "group_ranks", "linear_imputation", "pearson", "replaced",
    "replaced_at", "spearman_ties", "unit_trapezoid", "class_scores", "ranked", "rank_correlation",
    "rearranged_side", "rearranged",
]
