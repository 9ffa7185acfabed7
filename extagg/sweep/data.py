"""The sweep's images: real photos from scikit-image (default) or a data set read from disk, as Samples."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..evaluation.datasets import Sample, load_image
from .config import SKIMAGE_PHOTOS, SweepConfig


def skimage_photo_paths() -> list[Path]:
    """Paths of the colour photos in :data:`~extagg.sweep.config.SKIMAGE_PHOTOS` (shipped with scikit-image)."""
    try:
        import skimage
    except ImportError as exc:
        raise ImportError("the default sweep's photos need scikit-image (`pip install extagg[default-model]`)") from exc
    folder = Path(skimage.__file__).parent / "data"
    out = []
    for name in SKIMAGE_PHOTOS:
        hits = sorted(folder.glob(name + ".*"))
        if hits:
            out.append(hits[0])
    if not out:
        raise InputError(f"no scikit-image photos found in {folder}")
    return out


def safe_id(name: Optional[str]) -> Optional[str]:
    """``name`` as text that UTF-8 can write: a file name that is not UTF-8 (decoded by Python with escaped bytes)
    gets its bytes as ``\\xNN`` (``caf\\xe9``); valid names are unchanged. Ids that then collide are made distinct
    by :func:`load_samples`."""
    if not name:
        return name
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


class Samples(list):
    """A list of samples with the data set's ``class_names`` (None when the data declares no classes)."""

    class_names = None


def named_samples(samples: list, class_names) -> "Samples":
    out = Samples(samples)
    out.class_names = tuple(class_names) if class_names is not None else None
    return out


def load_samples(config: SweepConfig) -> list[Sample]:
    """The configured images in a fixed order (first ``config.limit``); ids are unique, stable and valid UTF-8
    (:func:`safe_id`); the list's ``class_names`` are the data set's classes (None for the scikit-image photos).
    A folder's images must be regular files inside ``config.root`` (symbolic links out of it, FIFOs and devices
    are refused)."""
    limit: Optional[int] = config.limit
    if config.data == "skimage":
        paths = skimage_photo_paths()[:limit]
        return [Sample(load_image(p), image_id=p.stem) for p in paths]
    from ..evaluation.datasets import COCOPointing, ImageFolderSamples, VOCPointing

    if config.data == "voc":
        data = VOCPointing(config.root, limit=limit)
    elif config.data == "coco":
        data = COCOPointing(config.root, limit=limit)
    else:
        data = ImageFolderSamples(config.root, limit=limit)
    samples = list(data)
    ids = [safe_id(s.image_id) or str(i) for i, s in enumerate(samples)]
    if len(set(ids)) != len(ids):
        ids = [f"{i}:{s}" for i, s in enumerate(ids)]
    import attrs

    return named_samples([attrs.evolve(s, image_id=i) for s, i in zip(samples, ids)], getattr(data, "class_names", None))
