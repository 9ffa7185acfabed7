"""Deletion and insertion (Petsiuk et al. 2018, RISE): does the model's confidence follow the map's ranking?

Pixels are ranked by decreasing saliency (the map resized bilinearly to the image). **Deletion** replaces them,
most salient first, by a baseline image and records the softmax probability of the target class; a faithful
map makes it fall fast (low area under the curve is good). **Insertion** starts from the baseline and puts the
image's pixels back in the same order; a faithful map makes the probability rise fast (high area is good).

The curve has ``steps + 1`` points at fractions ``0, 1/steps, ..., 1`` of the pixels (``k * H * W // steps``
pixels at point ``k``); the score is its trapezoid area over [0, 1]. Ties in the ranking go to the lower
row-major index; NaN ranks last. All curve points of all images are evaluated in batches of ``batch_size``
forward passes without gradients, in eval mode; the model is restored exactly (:func:`extagg.guard.preserved`).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ..errors import InputError, UnknownNameError
from ..guard import compute_dtype, model_device_dtype, preserved
from ..progress import tick
from ..targets import class_logits
from .common import resize
from .pointing import gaussian_smooth

MODES = ("deletion", "insertion")
BASELINES = ("blur", "zero", "mean")
BLUR = 0.02
"""Sigma of the ``"blur"`` baseline as a fraction of the image's longer side (TorchRay's smoothing constant)."""

Baseline = Union[str, torch.Tensor]
Targets = Union[None, int, Sequence[int], torch.Tensor]


def deletion_insertion(model: torch.nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: Targets = None, *,
                       mode: str, steps: int = 32, baseline: Baseline = "blur", batch_size: int = 64) -> torch.Tensor:
    """Area under the deletion or insertion curve of each image, shape (N,), on the model's device, float32
    (float64 for a float64 model).

    :param images: (N, C, H, W) model inputs (already preprocessed); any floating dtype (composited in float32
        for half / bfloat16, then cast to the model's dtype).
    :param maps: (N, h, w), (N, 1, h, w) or (N, T=1, h, w) saliency maps at any resolution.
    :param targets: class per image: an int (all images), a sequence or tensor of N ints (or (N, 1)), or None
        for the class the model predicts on the unmodified image.
    :param mode: ``"deletion"`` (image -> baseline) or ``"insertion"`` (baseline -> image).
    :param steps: number of intervals of the curve (``steps + 1`` points), >= 1.
    :param baseline: ``"blur"`` (Gaussian, sigma = 0.02 x the longer side, replicate padding), ``"zero"``,
        ``"mean"`` (each image's per-channel mean) or a tensor broadcastable to (N, C, H, W).
    :param batch_size: forward passes evaluate this many curve points at once.
    """
    return trapezoid(deletion_insertion_curves(model, images, maps, targets, mode=mode, steps=steps,
                                               baseline=baseline, batch_size=batch_size))


def trapezoid(curves: torch.Tensor) -> torch.Tensor:
    """Trapezoid area over [0, 1] of (N, K+1) curves sampled at K+1 evenly spaced points."""
    k = curves.shape[-1] - 1
    return (curves.sum(-1) - (curves[..., 0] + curves[..., -1]) / 2) / k


def deletion_insertion_curves(model: torch.nn.Module, images: torch.Tensor, maps: torch.Tensor,
                              targets: Targets = None, *, mode: str, steps: int = 32, baseline: Baseline = "blur",
                              batch_size: int = 64) -> torch.Tensor:
    """The (N, steps + 1) probability curves behind :func:`deletion_insertion` (same arguments)."""
    x, target, n = _prepare(model, images, targets, mode, steps, batch_size)
    ranks = _ranks(_maps(maps, n, tuple(x.shape[-2:])).to(x.device))
    return _curves(model, x, ranks[None], target, mode, steps, _baseline(baseline, x), batch_size)[0]


def deletion_insertion_grid(model: torch.nn.Module, images: torch.Tensor, maps: Sequence[torch.Tensor],
                            targets: Targets = None, *, mode: str, steps: int = 32, baseline: Baseline = "blur",
                            batch_size: int = 64) -> torch.Tensor:
    """The (P, N, steps + 1) curves of P maps of each of the same N images (``maps``: P maps of the shapes
    :func:`deletion_insertion` takes), equal to P calls of :func:`deletion_insertion_curves` but sharing every
    forward pass whose input is the same image: a curve point is evaluated once per distinct (image, set of
    changed pixels). The endpoints (no pixel and every pixel changed) are the same for all P maps, and maps that
    rank pixels alike (a constant map, maps upsampled from one coarse grid) share their points too."""
    x, target, n = _prepare(model, images, targets, mode, steps, batch_size)
    maps = list(maps)
    if not maps:
        raise InputError("maps is empty: give at least one (N, h, w) map per image")
    ranks = torch.stack([_ranks(_maps(m, n, tuple(x.shape[-2:])).to(x.device)) for m in maps])
    return _curves(model, x, ranks, target, mode, steps, _baseline(baseline, x), batch_size)


def _prepare(model, images, targets, mode, steps, batch_size):
    if mode not in MODES:
        raise UnknownNameError("deletion/insertion mode", str(mode), MODES)
    _check_int("steps", steps)
    _check_int("batch_size", batch_size)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise InputError(f"images must be a floating (N, C, H, W) tensor, got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
    n = images.shape[0]
    if n == 0:
        raise InputError("images is empty (N = 0)")
    device, model_dtype = model_device_dtype(model, images)
    dtype = torch.promote_types(compute_dtype(images.dtype), compute_dtype(model_dtype))
    return images.detach().to(device=device, dtype=dtype), _targets(targets, n, device), n


def _curves(model, x, ranks, target, mode, steps, base, batch_size) -> torch.Tensor:
    """(P, N, steps + 1) curves of ranks (P, N, H, W); one forward per distinct (image, changed pixels)."""
    p, n, h, w = ranks.shape
    device, model_dtype = model_device_dtype(model, x)
    counts = torch.arange(steps + 1, device=device) * (h * w) // steps  # pixels changed at each point
    source, image, point, inverse = _distinct_points(ranks, counts)
    with preserved(model), torch.no_grad():
        model.eval()
        if target is None:
            target = _forward(model, x, model_dtype, batch_size).argmax(1)
        probs = torch.empty(len(source), device=device, dtype=x.dtype)
        for start in range(0, len(source), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(source)), device=device)
            img = image[idx]
            changed = (ranks[source[idx], img] < counts[point[idx]][:, None, None])[:, None]  # (B, 1, H, W)
            if mode == "deletion":
                batch = torch.where(changed, base[img], x[img])
            else:
                batch = torch.where(changed, x[img], base[img])
            scores = _forward(model, batch, model_dtype, batch_size)
            if start == 0:
                _check_targets_in_range(target, scores.shape[1])
            probs[idx] = torch.softmax(scores.to(x.dtype), 1).gather(1, target[img][:, None])[:, 0]
            tick("curve", len(idx))  # the sweep's progress bar moves per curve batch
    return probs[inverse].view(p, n, steps + 1)


_HASH_CHUNK = 1 << 24
"""Pixels of changed-pixel masks hashed at once (bounds the memory of finding the distinct curve points)."""


def _hash_weights(pixels: int) -> torch.Tensor:
    """(2, pixels) fixed random int64 weights: a set of pixels hashes to the sums of its weights."""
    return torch.randint(-2 ** 62, 2 ** 62, (2, pixels), generator=torch.Generator().manual_seed(0))


def _distinct_points(ranks: torch.Tensor, counts: torch.Tensor):
    """The distinct curve points of ranks (P, N, H, W) at ``counts`` (K,): ``(map, image, point, inverse)``, where
    distinct point j is map ``map[j]`` of image ``image[j]`` at point ``point[j]``, and ``inverse`` (P * N * K,)
    gives for every (map, image, point), in that order, the distinct point with the same image and the same
    changed pixels. Masks are grouped by two random 64-bit sums over their changed pixels, then compared pixel by
    pixel with their group's first member; a hash collision (never observed) turns the sharing off."""
    p, n, h, w = ranks.shape
    k = counts.shape[0]
    device = ranks.device
    flat = ranks.reshape(p * n, h * w)
    rows = max(1, _HASH_CHUNK // (h * w * k))

    def masks(row, point):  # (B, H * W) changed pixels of flat row ``row`` at point ``point``
        return flat[row] < counts[point][:, None]

    weights = _hash_weights(h * w).to(device)
    keys = torch.zeros(p * n, k, 3, dtype=torch.long, device=device)
    keys[..., 0] = (torch.arange(p * n, device=device) % n)[:, None]  # the image
    changed_before = (counts - 1).clamp(min=0)  # the hash of the first counts[j] pixels in rank order
    for start in range(0, p * n, rows):
        part = flat[start:start + rows]
        order = torch.empty_like(part).scatter_(1, part, torch.arange(h * w, device=device).expand_as(part))
        for c in range(2):  # int64 sums wrap around: a hash of the set of changed pixels
            sums = weights[c][order].cumsum(1)[:, changed_before]
            keys[start:start + rows, :, c + 1] = torch.where(counts > 0, sums, torch.zeros_like(sums))
    uniq, inverse = torch.unique(keys.view(-1, 3), dim=0, return_inverse=True)
    every = torch.arange(p * n * k, device=device)
    first = torch.full((len(uniq),), p * n * k, dtype=torch.long, device=device)
    first.scatter_reduce_(0, inverse, every, "amin")
    for start in range(0, p * n * k, rows * k):
        mine, rep = every[start:start + rows * k], first[inverse[start:start + rows * k]]
        if not bool((masks(mine // k, mine % k) == masks(rep // k, rep % k)).all()):
            first, inverse = every, every  # a collision: every point on its own
            break
    return first // k // n, first // k % n, first % k, inverse


def _forward(model, x, model_dtype, batch_size) -> torch.Tensor:
    outs = []
    for chunk in x.split(batch_size):
        out = model(chunk.to(model_dtype))
        if not isinstance(out, torch.Tensor) or out.ndim < 2:
            raise InputError("the model must return (N, C) class scores (or (N, C, h, w)) for deletion/insertion")
        outs.append(class_logits(out))
    return torch.cat(outs)


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")


def _maps(maps, n: int, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) float maps at the image size."""
    if not isinstance(maps, torch.Tensor) or maps.ndim not in (3, 4) or (maps.ndim == 4 and maps.shape[1] != 1):
        raise InputError(f"maps must be (N, h, w) or (N, 1, h, w) tensors (one map per image), got "
                         f"{tuple(getattr(maps, 'shape', ())) or type(maps).__name__}")
    if maps.shape[0] != n:
        raise InputError(f"maps has {maps.shape[0]} maps for {n} images")
    m = maps.detach().float()
    m = m[:, None] if m.ndim == 3 else m
    return resize(m, size)[:, 0]


def _ranks(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) position of each pixel in decreasing-saliency order; ties by row-major index, NaN last."""
    flat = maps.flatten(1).nan_to_num(nan=-torch.inf)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks.view(maps.shape)


def _baseline(baseline, x: torch.Tensor) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(baseline.detach().to(device=x.device, dtype=x.dtype), x.shape)
        except RuntimeError:
            raise InputError(f"a baseline tensor must broadcast to the images' shape {tuple(x.shape)}, got "
                             f"{tuple(baseline.shape)}") from None
    if not isinstance(baseline, str) or baseline not in BASELINES:
        raise UnknownNameError("deletion/insertion baseline", str(baseline), BASELINES,
                               "or pass a tensor broadcastable to the images")
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    return gaussian_smooth(x, BLUR)


def _targets(targets, n: int, device) -> Optional[torch.Tensor]:
    if targets is None:
        return None
    if isinstance(targets, bool):
        raise InputError(f"targets must be class indices, got {targets!r}")
    if isinstance(targets, int):
        t = torch.full((n,), targets, dtype=torch.long)
    else:
        try:
            t = torch.as_tensor(targets)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"targets must be None, an int or N class indices, got {targets!r}") from None
        if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
            raise InputError(f"targets must be integer class indices, got dtype {t.dtype}")
        if t.ndim == 2 and t.shape[1] == 1:
            t = t[:, 0]
        if t.ndim == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise InputError(f"targets must hold one class per image ({n}), got shape {tuple(t.shape)}")
    if (t < 0).any():
        raise InputError(f"targets must be >= 0, got {int(t.min())}")
    return t.to(device=device, dtype=torch.long)


def _check_targets_in_range(targets: torch.Tensor, num_classes: int) -> None:
    if int(targets.max()) >= num_classes:
        raise InputError(f"target class {int(targets.max())} is out of range for a model with {num_classes} "
                         f"classes (0..{num_classes - 1})")
