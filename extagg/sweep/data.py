"""The sweep's images: real photos from scikit-image (default) or a data set read from disk, as Samples."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Iterator, Optional

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


def select(n: int, limit: Optional[int] = None, sample: Optional[int] = None, seed: int = 0) -> list[int]:
    """The indices of the images a sweep uses out of ``n``, in increasing order: the first ``limit``, then (with
    ``sample``) ``sample`` of those drawn without replacement by a generator seeded with ``seed`` (the same
    draw on every machine and every resume; all of them when there are no more)."""
    import torch

    picked = list(range(n if limit is None else min(n, limit)))
    if sample is None or sample >= len(picked):
        return picked
    order = torch.randperm(len(picked), generator=torch.Generator().manual_seed(seed))
    return sorted(picked[i] for i in order[:sample].tolist())


def _distinct(ids: list) -> list[str]:
    ids = [safe_id(s) or str(i) for i, s in enumerate(ids)]
    if len(set(ids)) != len(ids):
        ids = [f"{i}:{s}" for i, s in enumerate(ids)]
    return ids


class ImageSource(Sequence):
    """The images of a data set read from disk, decoded only when asked for: ``ids`` (unique, stable, valid UTF-8)
    are known without decoding anything; ``source[i]`` decodes image ``i`` (a :class:`Sample` with that id);
    ``class_names`` are the data set's classes. :func:`batches` decodes them in DataLoader workers."""

    def __init__(self, data, picked: list[int], class_names=None):
        self.data, self.picked = data, picked
        self.ids = _distinct([data.image_id(i) for i in picked])
        self.class_names = tuple(class_names) if class_names is not None else None

    def __len__(self) -> int:
        return len(self.picked)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        import attrs

        return attrs.evolve(self.data[self.picked[i]], image_id=self.ids[i])


def image_ids(samples) -> list[str]:
    """The ids of ``samples`` in order (an :class:`ImageSource` answers without decoding)."""
    ids = getattr(samples, "ids", None)
    return list(ids) if ids is not None else [s.image_id for s in samples]


def default_workers() -> int:
    """min(4, CPUs this process may use): the decoding workers of ``--workers`` left out."""
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(4, cpus)


def _as_list(batch):  # the DataLoader's collate: the samples as they are
    return batch


def batches(samples, index_batches: list, workers: Optional[int] = None) -> Iterator[list]:
    """The samples of each batch of ``index_batches``, batch by batch in that order. An :class:`ImageSource` is
    decoded by ``workers`` DataLoader worker processes (None: :func:`default_workers`; 0: in this process) while
    the caller computes, two batches ahead per worker; samples already in memory are handed out as they are."""
    if not index_batches:
        return
    workers = default_workers() if workers is None else workers
    if not isinstance(samples, ImageSource) or workers == 0:
        for batch in index_batches:
            yield [samples[i] for i in batch]
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(samples, batch_sampler=[list(b) for b in index_batches], collate_fn=_as_list,
                        num_workers=min(workers, len(index_batches)))
    yield from loader  # in the order of the batch sampler, whatever worker finishes first


def load_samples(config: SweepConfig):
    """The configured images in a fixed order (:func:`select`: first ``config.limit``, then ``config.sample``
    drawn with ``config.seed``); ids are unique, stable and valid UTF-8 (:func:`safe_id`; VOC: the image set's
    ids, COCO and folders: the file name without extension). Data read from disk comes as an
    :class:`ImageSource` (decoded when used), the scikit-image photos as a list; ``class_names`` are the data
    set's classes (None for the photos). A folder's images must be regular files inside ``config.root``
    (symbolic links out of it, FIFOs and devices are refused)."""
    if config.data == "skimage":
        paths = skimage_photo_paths()
        paths = [paths[i] for i in select(len(paths), config.limit, config.sample, config.seed)]
        return named_samples([Sample(load_image(p), image_id=p.stem) for p in paths], None)
    from ..evaluation.datasets import COCOPointing, ImageFolderSamples, VOCPointing

    if config.data == "voc":
        data = VOCPointing(config.root)
    elif config.data == "coco":
        data = COCOPointing(config.root)
    else:
        data = ImageFolderSamples(config.root)
    return ImageSource(data, select(len(data), config.limit, config.sample, config.seed),
                       getattr(data, "class_names", None))
