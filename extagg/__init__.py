"""extagg: Extract & Aggregate saliency (Rebuffi et al., CVPR 2020) as composable pluggy plugins.

Quick tour::

    import extagg
    maps = extagg.saliency(model, images, methods=["scaling+sum", "conv3x3+norm"],
                           layers=["layer3", "layer4"], targets=torch.tensor([281, 3]))
    maps["conv3x3+norm", "layer4"]          # (N, 1, h, w), raw
    extagg.methods("scaling+*")             # the design space, as canonical strings
    extagg.parse_method("Scaling + ReLU + norm")   # -> scaling+relu+norm
"""
from __future__ import annotations

from typing import Iterable, Union

from .capture import LayerCapture
from .phase2 import Dense, Factored, PatchGeometry, Product, Scaled
from .engine import saliency, saliency_per_example
from .errors import (
    DuplicateNameError,
    ExtaggError,
    InputError,
    InvalidMethodError,
    LayerMismatchError,
    MethodSyntaxError,
    PluginContractError,
    PluginLoadError,
    UnknownNameError,
)
from .errors import ZeroGradientWarning
from . import objectives
from .hookspecs import hookimpl
from .method import Call, Method
from .plugins import make_plugin_manager
from .registry import Registry, default_registry, reload_plugins
from .result import SaliencyMaps
from .combine import (
    LayerWeights,
    combination_sweep,
    combine as combine_layers,
    feature_spread_weights,
    layer_order,
    probe_accuracy_weights,
)

__version__ = "0.1.0"


def parse_method(text: Union[str, Method], registry: Registry = None) -> Method:
    """Parse a method string with the default (or given) registry; ``str(result)`` is canonical."""
    return (registry or default_registry()).parse(text)


def methods(pattern: Union[str, Iterable[str]] = "*", exclude: Union[str, Iterable[str]] = (),
            registry: Registry = None) -> list[str]:
    """The design space as canonical strings, filtered by fnmatch wildcards (see :mod:`extagg.space`)."""
    return (registry or default_registry()).methods(pattern, exclude)


def describe(method: Union[str, Method], registry: Registry = None) -> str:
    """Composition, formula and origin of a method."""
    return (registry or default_registry()).describe(method)


__all__ = [
    "Call", "Dense", "DuplicateNameError", "ExtaggError", "Factored", "InputError", "InvalidMethodError",
    "LayerCapture", "LayerMismatchError", "LayerWeights", "Method", "MethodSyntaxError", "PatchGeometry",
    "PluginContractError", "PluginLoadError", "Product", "Registry", "SaliencyMaps", "Scaled", "UnknownNameError",
    "combination_sweep", "combine_layers", "default_registry", "describe", "feature_spread_weights", "hookimpl",
    "layer_order", "make_plugin_manager", "methods", "parse_method", "probe_accuracy_weights", "reload_plugins",
    "saliency", "saliency_per_example",
]
__all__ += ["ZeroGradientWarning", "objectives"]
