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

from typing import TYPE_CHECKING, Iterable, Union

from .lazy import lazy_package

_EXPORTS = {  # submodule -> the public names it defines, imported on first use (``import extagg`` imports no torch)
    ".capture": ("LayerCapture",),
    ".phase2": ("Dense", "Factored", "PatchGeometry", "Product", "Scaled"),
    ".engine": ("saliency", "saliency_per_example"),
    ".errors": ("DuplicateNameError", "ExtaggError", "InputError", "InvalidMethodError", "LayerMismatchError",
                "MethodSyntaxError", "PluginContractError", "PluginLoadError", "UnknownNameError",
                "ZeroGradientWarning"),
    ".hookspecs": ("hookimpl",),
    ".method": ("Call", "Method"),
    ".plugins": ("make_plugin_manager",),
    ".registry": ("Registry", "default_registry", "reload_plugins"),
    ".result": ("SaliencyMaps",),
    ".combine": ("LayerWeights", "combination_sweep", "combine_layers=combine", "feature_spread_weights",
                 "layer_order", "probe_accuracy_weights"),
}
if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names come through lazy_package below
    from .capture import LayerCapture  # noqa: F401
    from .combine import combine as combine_layers  # noqa: F401
    from .engine import saliency, saliency_per_example  # noqa: F401
    from .method import Method
    from .registry import Registry, default_registry  # noqa: F401
    from .result import SaliencyMaps  # noqa: F401

__version__ = "0.1.0"


def parse_method(text: Union[str, "Method"], registry: "Registry" = None) -> "Method":
    """Parse a method string with the default (or given) registry; ``str(result)`` is canonical."""
    return (registry or _default_registry()).parse(text)


def methods(pattern: Union[str, Iterable[str]] = "*", exclude: Union[str, Iterable[str]] = (),
            registry: "Registry" = None) -> list[str]:
    """The design space as canonical strings, filtered by fnmatch wildcards (see :mod:`extagg.space`)."""
    return (registry or _default_registry()).methods(pattern, exclude)


def describe(method: Union[str, "Method"], registry: "Registry" = None) -> str:
    """Composition, formula and origin of a method."""
    return (registry or _default_registry()).describe(method)


def _default_registry():
    from .registry import default_registry

    return default_registry()


__all__ = [
    "Call", "Dense", "DuplicateNameError", "ExtaggError", "Factored", "InputError", "InvalidMethodError",
    "LayerCapture", "LayerMismatchError", "LayerWeights", "Method", "MethodSyntaxError", "PatchGeometry",
    "PluginContractError", "PluginLoadError", "Product", "Registry", "SaliencyMaps", "Scaled", "UnknownNameError",
    "combination_sweep", "combine_layers", "default_registry", "describe", "feature_spread_weights", "hookimpl",
    "layer_order", "make_plugin_manager", "methods", "parse_method", "probe_accuracy_weights", "reload_plugins",
    "saliency", "saliency_per_example", "ZeroGradientWarning", "objectives",
]


lazy_package(__name__, _EXPORTS)
