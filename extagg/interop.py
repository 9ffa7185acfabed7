"""extagg with Quantus and Captum, both ways.

extagg's methods in their code:

* :func:`quantus_explain_func` ``(method, layer)``: a Quantus ``explain_func``, ``(model, inputs, targets,
  **kwargs) -> np.ndarray (N, 1, H, W)``, for the Quantus metrics that make new maps (randomisation, robustness)
  or for ``a_batch=None``. ``inputs`` / ``targets`` may be NumPy arrays (as Quantus passes them) or tensors.
* :class:`Attribution` ``(model, method, layer, upsample=True)``: Captum's ``attribute(inputs, target=...)``
  contract, one method at one layer, ``(N, 1, h, w)`` at the layer's grid or upsampled to the input, as
  ``LayerGradCam`` users hold them (``LayerAttribution.interpolate`` works on the layer-grid maps).

Their explainers in extagg's evaluation (:func:`extagg.evaluation.evaluate`, :func:`extagg.sweep.sweep`,
``explainers={name: explainer}``; :func:`extagg.evaluation.score` ``explain=``): an explainer is a callable
``(model, x, targets) -> maps`` (see :mod:`extagg.evaluation.external`), scored at the layer ``"external"``.

* :func:`from_captum` ``(attribution, **attribute_kwargs)``: a Captum attribution object (``Saliency(model)``,
  ``IntegratedGradients(model)``, ``LayerGradCam(model, model.layer4)``, ``NoiseTunnel(...)``); channel
  attributions are summed over channels.
* :func:`from_pytorch_grad_cam` ``(cam, layers=None, **cam_kwargs)``: a pytorch-grad-cam class (``ScoreCAM``)
  with the names of its target layers, or an instance; its maps are min-max scaled per image (its own
  post-processing).

Further passes (a randomised copy of the model, a second class) call the explainer with that model: both
adapters rebuild the explainer on it (the same class, the layers found by name), so the Captum object or CAM
the user built is used as is only on the model it was built on. Every call leaves the model as it was (extagg
runs explainers inside :func:`extagg.guard.preserved`; :class:`Attribution` and :func:`quantus_explain_func`
go through :func:`extagg.saliency`, which does the same).
"""
from __future__ import annotations

import inspect
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .errors import InputError
from .evaluation.external import EXTERNAL_LAYER, Explainer  # noqa: F401 - re-exported for users

Layer = Union[str, torch.nn.Module]


def _canonical(registry, method: str) -> str:
    if not isinstance(method, str):
        raise InputError(f"method must be one extagg method string such as 'gradcam', got {type(method).__name__}")
    return registry.canonical(method)


def _check_layer(layer) -> None:
    if not isinstance(layer, (str, torch.nn.Module)):
        raise InputError(f"layer must be a module name such as 'layer4', 'input' or a module of the model, got "
                         f"{type(layer).__name__}")


def _one_map(model, x, method: str, layer: Layer, targets, resize, registry) -> torch.Tensor:
    """(N, 1, h, w) maps of one method at one layer (per-example methods go one pair at a time)."""
    from .evaluation.common import run_saliency

    maps, _ = run_saliency(model, x, [method], [layer], targets=targets, resize=resize, registry=registry)
    return next(iter(maps.values()))


def _targets(targets, n: int, what: str) -> Optional[torch.Tensor]:
    """(N,) long class indices from None, an int, a sequence, an array or a tensor (one value: every image)."""
    if targets is None:
        return None
    try:
        t = torch.as_tensor(np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets))
    except (TypeError, ValueError):
        raise InputError(f"{what} must be class indices (an int or one per image), got {targets!r}") from None
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise InputError(f"{what} must be integer class indices, got {t.flatten()[:5].tolist()}")
    t = t.reshape(-1).to(torch.long)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise InputError(f"{what} must be one class per image ({n}) or one for all, got {t.numel()}")
    return t


def _size(resize, x: torch.Tensor):
    if resize is True:
        return tuple(x.shape[-2:])
    if resize is False:
        return False
    if isinstance(resize, (tuple, list)) and len(resize) == 2 and all(isinstance(v, int) and v > 0 for v in resize):
        return tuple(resize)
    raise InputError(f"resize must be True (the input's size), False (the layer's grid) or an (H, W) size, got "
                     f"{resize!r}")


def quantus_explain_func(method: str, layer: Layer = "input", *, resize=True, registry=None):
    """A Quantus ``explain_func`` computing ``method`` at ``layer`` with :func:`extagg.saliency`.

    Quantus calls it as ``explain_func(model=..., inputs=x_batch, targets=y_batch, device=..., **
    explain_func_kwargs)``; ``inputs`` are (N, C, H, W) NumPy arrays or tensors (moved to the model's device;
    ``device`` is used only for a model without parameters), ``targets`` (N,) class indices. Returns an (N, 1, H,
    W) float32 array: maps resized bilinearly to the input (``resize=True``; Quantus needs the input's size), at
    the layer's grid (``False``) or at an (H, W) size, never normalised (Quantus normalises and takes ``abs``
    itself, per metric). The method and layer are checked at the first call (the model is not known before).
    ``layer`` is a module name (every model Quantus hands over, a randomised copy included, has the same names).
    """
    from .registry import default_registry

    registry = registry or default_registry()
    method = _canonical(registry, method)
    _check_layer(layer)
    _size(resize, torch.zeros(1, 1, 1, 1))

    def explain_func(model, inputs, targets, **kwargs) -> np.ndarray:
        unknown = sorted(set(kwargs) - {"device"})
        if unknown:
            raise InputError(f"extagg's explain_func for {method!r} takes only device= from Quantus; got "
                             f"{unknown} (set the method and layer in quantus_explain_func)")
        if not isinstance(model, torch.nn.Module):
            raise InputError(f"extagg explains torch.nn.Module models, got {type(model).__name__}")
        x = inputs if isinstance(inputs, torch.Tensor) else torch.as_tensor(np.asarray(inputs))
        if x.ndim != 4:
            raise InputError(f"inputs must be (N, C, H, W), got shape {tuple(x.shape)}")
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device(kwargs.get("device") or x.device)
        x = x.to(device=device, dtype=x.dtype if x.is_floating_point() else torch.float32)
        t = _targets(targets, x.shape[0], "targets")
        maps = _one_map(model, x, method, layer, t, _size(resize, x), registry)
        return maps.detach().cpu().to(torch.float32).numpy()

    explain_func.__name__ = f"extagg_{method}"
    explain_func.__qualname__ = explain_func.__name__
    return explain_func


class Attribution:
    """Captum-style access to one extagg method at one layer: ``Attribution(model, "gradcam", "layer4")
    .attribute(x, target=3)`` -> ``(N, 1, h, w)``.

    :param layer: a module name, ``"input"`` or a module of ``model`` (Captum's ``layer`` argument).
    :param upsample: True: maps bilinearly upsampled to the input's (H, W) (as
        ``LayerAttribution.interpolate(attr, x.shape[-2:], "bilinear")``); False: at the layer's grid.
    The maps are the method's own, never normalised: ``gradcam`` is Captum's ``LayerGradCam`` with
    ``relu_attributions=True``, ``pooled-scaling+sum`` is it without; the model is left as it was.
    """

    def __init__(self, model: torch.nn.Module, method: str, layer: Layer = "input", upsample: bool = True, *,
                 registry=None):
        from .registry import default_registry

        if not isinstance(model, torch.nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(upsample, bool):
            raise InputError(f"upsample must be True or False, got {upsample!r}")
        _check_layer(layer)
        self.registry = registry or default_registry()
        self.forward_func = model  # Captum's name for the explained model
        self.method = _canonical(self.registry, method)
        self.layer = layer
        self.upsample = upsample
        if isinstance(layer, str):
            from .capture import resolve_layers
            from .engine import check_layer_fit

            check_layer_fit(self.registry, self.registry.parse(self.method), layer,
                            resolve_layers(model, [layer])[layer])

    multiplies_by_inputs = False

    def has_convergence_delta(self) -> bool:
        return False

    def attribute(self, inputs: torch.Tensor, target=None) -> torch.Tensor:
        """(N, 1, h, w) maps of ``inputs`` (an (N, C, H, W) tensor) for ``target``: an int (every image), N ints
        or an (N,) tensor; None explains the predicted class. On ``inputs``' device and dtype."""
        if isinstance(inputs, tuple) and len(inputs) == 1:
            inputs = inputs[0]
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4:
            raise InputError(f"inputs must be one (N, C, H, W) tensor, got {getattr(inputs, 'shape', type(inputs))}")
        if isinstance(target, tuple):
            raise InputError("target must be a class index per image; tuple targets (multi-dimensional outputs) "
                             "are not supported")
        t = _targets(target, inputs.shape[0], "target")
        maps = _one_map(self.forward_func, inputs, self.method, self.layer, t, _size(self.upsample, inputs),
                        self.registry)
        return maps.detach().to(device=inputs.device, dtype=inputs.dtype)

    def __repr__(self) -> str:
        return f"Attribution({self.method!r}, layer={self.layer!r}, upsample={self.upsample})"


# ----------------------------------------------------------------------------- their explainers in extagg
def _module_name(model: torch.nn.Module, module: torch.nn.Module, what: str) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise InputError(f"{what} is not a module of the model it was built on; cannot find it in another model")


def _modules(model: torch.nn.Module, names: Sequence[str]) -> list:
    found = dict(model.named_modules())
    missing = [n for n in names if n not in found]
    if missing:
        raise InputError(f"layer {missing[0]!r} is not a module of {type(model).__name__}")
    return [found[n] for n in names]


def _rebind_captum(attr, model: torch.nn.Module):
    """The Captum attribution ``attr`` rebuilt on ``model`` (same class, its layer found by name)."""
    inner = getattr(attr, "attribution_method", None)
    if inner is not None:  # NoiseTunnel
        return type(attr)(_rebind_captum(inner, model))
    old = attr.forward_func
    if not isinstance(old, torch.nn.Module):
        raise InputError(f"{type(attr).__name__} was built on a function, not a module, so it cannot be rebuilt on "
                         "another model (a metric's randomised copy); build it on the model, or pass your own "
                         "callable(model, x, targets) -> maps")
    args = [model]
    layer = getattr(attr, "layer", None)
    if isinstance(layer, torch.nn.Module):
        args += _modules(model, [_module_name(old, layer, f"{type(attr).__name__}'s layer")])
    kwargs = {}
    if "multiply_by_inputs" in inspect.signature(type(attr).__init__).parameters:
        kwargs["multiply_by_inputs"] = attr.multiplies_by_inputs
    return type(attr)(*args, **kwargs)


def from_captum(attribution, **attribute_kwargs) -> Explainer:
    """An explainer ``(model, x, targets) -> maps`` from a Captum attribution object; ``attribute_kwargs`` go to
    every ``attribute(x, target=targets, ...)`` call (``n_steps``, ``baselines``, ``internal_batch_size``,
    ``nt_type``, ...). Channel attributions (N, C, H, W) are summed over channels by extagg; layer attributions
    (N, 1, h, w) are resized bilinearly to the input. On another model than the one it was built on, the object
    is rebuilt there (same class, same ``multiply_by_inputs``, its layer by name)."""
    if not callable(getattr(attribution, "attribute", None)) or not hasattr(attribution, "forward_func"):
        raise InputError(f"from_captum takes a Captum attribution object (e.g. IntegratedGradients(model)), got "
                         f"{type(attribution).__name__}")

    def explain(model, x, targets):
        attr = attribution if model is attribution.forward_func else _rebind_captum(attribution, model)
        out = attr.attribute(x, target=targets, **attribute_kwargs)
        if isinstance(out, tuple):  # (attributions, delta) with return_convergence_delta
            out = out[0]
        return out.detach()

    explain.__name__ = f"captum_{type(attribution).__name__}"
    return explain


def from_pytorch_grad_cam(cam, layers: Union[None, str, Sequence[str]] = None, **cam_kwargs) -> Explainer:
    """An explainer ``(model, x, targets) -> maps`` from pytorch-grad-cam: a CAM class (``ScoreCAM``) with the
    names of its target ``layers`` and constructor keywords (``reshape_transform``, ...), or an instance (its
    layers found by name). Each call builds the CAM on the model it is given and releases its hooks; targets
    are ``ClassifierOutputTarget(class)``. The maps are pytorch-grad-cam's: ReLU'd, min-max scaled per image,
    at the input's size."""
    if isinstance(cam, type):
        if layers is None:
            raise InputError(f"from_pytorch_grad_cam({cam.__name__}) needs layers=[module names], e.g. ['layer4']")
        cls = cam
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names or not all(isinstance(n, str) for n in names):
            raise InputError(f"layers must be module names, got {layers!r}")
    else:
        if not hasattr(cam, "activations_and_grads") or not hasattr(cam, "target_layers"):
            raise InputError(f"from_pytorch_grad_cam takes a pytorch-grad-cam CAM class or instance, got "
                             f"{type(cam).__name__}")
        if layers is not None or cam_kwargs:
            raise InputError("give layers and keywords with a CAM class, not with an instance")
        cls = type(cam)
        names = [_module_name(cam.model, m, "a target layer") for m in cam.target_layers]
        cam_kwargs = {"reshape_transform": cam.reshape_transform}

    def explain(model, x, targets):
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with cls(model=model, target_layers=_modules(model, names), **cam_kwargs) as made:
            out = made(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        return torch.as_tensor(out)

    explain.__name__ = f"pytorch_grad_cam_{cls.__name__}"
    return explain
