"""The maps a sweep computes, saved per batch for the report's gallery (``--save-maps none|thumbs|full``).

For every batch the sweep saves the maps of its shared saliency pass for the explained class: one map per
(image, method, layer) the metrics score (layer combinations included, the identity check's companion methods
left out), with the photo and the explained class, in ``RUN_DIR/maps/batch-NNNNNN.npz`` (``NNNNNN``: the batch's
first image index in the plan). A NumPy ``.npz`` file, zip-deflated, read without pickle:

* ``index``: a JSON string ``{"mode", "images": [id, ...], "keys": [[canonical method, layer], ...],
  "classes": [explained class, ...], "names": [class name or null, ...], "size": [H, W]}``;
* ``maps``: (K, N, h, w) for the K keys and N images. ``thumbs``: float16, each map area-downsampled so that its
  longer side is at most :data:`THUMB` pixels and divided by its largest absolute value (the value is
  ``maps * scale``); ``full``: float32 at the model's input size, ``scale`` all ones. A map with no defined value
  (a NaN map) stays NaN;
* ``scale``: (K, N) float32;
* ``photos``: (N, 3, h, w) uint8, the images resized to the maps' size.

A batch's file is written atomically (a temporary file and a rename) **before** its batch file is committed
under ``units/``, so a batch with any finished unit has its maps; on resume a batch whose file exists keeps it (the maps
of a batch are deterministic, so a recomputed batch would write the same numbers) and a finished batch is never
recomputed. ``none`` writes nothing.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from .config import SAVE_MAPS  # noqa: F401 - re-exported

THUMB = 64
"""The longer side of a thumbnail map, in pixels."""
FOLDER = "maps"


def batch_path(run_dir, first: int) -> Path:
    """The maps file of the batch whose first image has plan index ``first``."""
    return Path(run_dir) / FOLDER / f"batch-{first:06d}.npz"


def saved_keys(plan) -> list[tuple[str, str]]:
    """The (canonical method, layer) keys whose maps are saved: every key a metric scores, in plan order."""
    return list(dict.fromkeys(k for metric in plan.metrics for k in plan.keys(metric)))


def thumb_size(size: tuple[int, int]) -> tuple[int, int]:
    """The thumbnail size of an (H, W) map: the longer side at most :data:`THUMB`, the aspect kept."""
    h, w = int(size[0]), int(size[1])
    scale = min(1.0, THUMB / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def estimate_bytes(mode: str, n_maps: int, n_images: int, size: Optional[tuple[int, int]]) -> int:
    """Upper bound of the bytes the saved maps take before compression: ``n_maps`` maps (K keys x images) and
    ``n_images`` photos at the thumbnail (``thumbs``) or input (``full``) size; 0 for ``none``."""
    if mode == "none" or size is None:
        return 0
    h, w = thumb_size(size) if mode == "thumbs" else (int(size[0]), int(size[1]))
    per_map = h * w * (2 if mode == "thumbs" else 4) + 4
    return n_maps * per_map + n_images * 3 * h * w


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def pack(mode: str, keys, maps: dict, image_ids, photos, classes, names) -> dict:
    """The arrays of one batch's file. ``maps``: {key: (N, H, W)}; ``photos``: N images (C, H', W') in [0, 1] of
    any sizes (each is resized to the maps' size)."""
    from ..errors import InputError

    if mode not in ("thumbs", "full"):
        raise InputError(f"save_maps must be one of {', '.join(SAVE_MAPS)} to pack maps, got {mode!r}")
    size = tuple(next(iter(maps.values())).shape[-2:])
    out_size = thumb_size(size) if mode == "thumbs" else size
    stack = torch.stack([maps[k].detach().float().cpu() for k in keys])  # (K, N, H, W)
    if out_size != size:
        stack = torch.nn.functional.adaptive_avg_pool2d(stack, out_size)
    if mode == "thumbs":
        finite = torch.where(torch.isfinite(stack), stack.abs(), torch.zeros(()))
        scale = finite.flatten(2).amax(2)
        scale = torch.where(scale > 0, scale, torch.ones(()))
        data = (stack / scale[..., None, None]).to(torch.float16)
    else:
        scale = torch.ones(stack.shape[:2])
        data = stack
    pictures = torch.cat([torch.nn.functional.interpolate(_photo(p)[None], size=out_size, mode="bilinear",
                                                          align_corners=False, antialias=True) for p in photos])
    pictures = (pictures.clamp(0, 1) * 255).round().to(torch.uint8)
    index = {"mode": mode, "images": list(image_ids), "keys": [list(k) for k in keys],
             "classes": [int(c) for c in classes], "names": list(names), "size": list(size)}
    return {"index": np.array(json.dumps(index)), "maps": data.numpy(), "scale": scale.to(torch.float32).numpy(),
            "photos": pictures.numpy()}


def write(path: Path, arrays: dict) -> None:
    """Write one batch's file atomically (a temporary file in the same folder, fsync, rename)."""
    from .store import check_directory, check_file

    path = Path(path)
    check_directory(path.parent.parent)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    check_directory(path.parent)
    check_file(path)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class MapSaver:
    """Saves each batch's maps before its units (see the module docstring). ``writer``: whether this process
    writes (rank 0); other ranks hand their packed batches to :meth:`take` for rank 0 to write."""

    def __init__(self, run_dir, plan, mode: str, categories=None, writer: bool = True):
        self.run_dir, self.plan, self.mode, self.writer = Path(run_dir), plan, mode, writer
        self.keys = saved_keys(plan)
        self.categories = categories
        self._held: list = []

    @classmethod
    def for_run(cls, config, plan, model, example: torch.Tensor, writer: bool = True) -> Optional["MapSaver"]:
        """The saver of a sweep (None for ``save_maps="none"``), with the model's class names when known."""
        if config.save_maps == "none":
            return None
        from ..evaluation.common import logits
        from .labels import model_categories

        return cls(config.run_dir, plan, config.save_maps, model_categories(config, logits(model, example).shape[1]),
                   writer)

    def missing(self, batch: tuple[int, ...]) -> bool:
        """Whether the batch has no maps file yet (a batch whose file exists keeps it)."""
        from .store import check_file

        return not check_file(batch_path(self.run_dir, batch[0]))

    def callback(self, batch: tuple[int, ...], samples, distributed: bool):
        """``on_maps(maps, classes)`` for :meth:`BatchRunner.run`, or None when the batch keeps its file."""
        if not distributed and not self.missing(batch):
            return None

        def on_maps(maps: dict, classes) -> None:
            names = [self._name(int(c)) for c in classes]
            photos = [s.image for s in samples]
            keys = [k for k in self.keys if k in maps]
            arrays = pack(self.mode, keys, maps, [self.plan.image_ids[i] for i in batch], photos, classes, names)
            if distributed:
                self._held.append((batch[0], arrays))
            else:
                write(batch_path(self.run_dir, batch[0]), arrays)
        return on_maps

    def take(self) -> list:
        """The packed batches held for rank 0 (and forget them)."""
        held, self._held = self._held, []
        return held

    def write_held(self, parts) -> None:
        """Rank 0: write the batches the ranks packed (a batch whose file exists keeps it)."""
        if not self.writer:
            return
        for first, arrays in parts:
            if self.missing((first,)):
                write(batch_path(self.run_dir, first), arrays)

    def _name(self, c: int) -> Optional[str]:
        cats = self.categories
        return str(cats[c]) if cats is not None and 0 <= c < len(cats) else None


def _photo(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] (a grey (1, H, W) image repeated)."""
    image = image.detach().float().cpu()
    if image.ndim == 2:
        image = image[None]
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image[:3]


def read_batches(run_dir) -> Iterator[dict]:
    """Every saved batch of ``run_dir`` in plan order: ``{"index": dict, "maps": (K, N, h, w) float32 (values,
    the scale applied), "photos": (N, 3, h, w) uint8, "path": Path}``. A file that cannot be read is an
    :class:`~extagg.errors.InputError` naming it."""
    from ..errors import InputError
    from .store import check_file

    folder = Path(run_dir) / FOLDER
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("batch-*.npz")):
        check_file(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                index = json.loads(str(f["index"]))
                maps = f["maps"].astype(np.float32) * f["scale"][..., None, None]
                photos = f["photos"]
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"cannot read the saved maps {str(path)!r} ({exc}); move it away to report without "
                             "that batch's maps, or rerun the sweep in a new run directory") from exc
        yield {"index": index, "maps": maps, "photos": photos, "path": path}
