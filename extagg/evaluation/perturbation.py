"""Perturbed inputs forwarded once per batch: the machinery behind the perturbation metrics (pixel flipping,
region perturbation, selectivity, ROAD, IROF, faithfulness and monotonicity correlation, average drop).

A perturbation metric builds perturbed copies of the batch's images (for every map of every method and layer) and
reads one number of the model's output on each. :class:`Forwards` takes those images in any order, recognises an
image it has seen (same source image, same values bit for bit: the baseline image, the first and last points of
every curve, the points of maps that rank alike, the random subsets that do not depend on the map) and forwards
each distinct one once, in batches of ``batch_size``, without gradients, in eval mode, leaving the model exactly as
it was (:func:`extagg.guard.preserved`). A :class:`~extagg.evaluation.context.BatchContext` holds one per batch
(``ctx.forwards()``), so the metrics of a batch share theirs.

The helpers build the perturbed images of the metrics on *features*: the ``C * H * W`` entries of an image in
channel-major order (Quantus's layout: a one-channel map stands for each of the image's channels). ``ranks`` give
each feature the step at which it is replaced (:func:`feature_ranks`, :func:`group_ranks`); :func:`replaced`
builds the images with the features of rank < ``count`` replaced by a baseline.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..errors import InputError
from ..guard import compute_dtype, model_device_dtype, preserved
from ..progress import tick
from ..targets import class_logits
from .similarity import average_ranks, pearson

OUTPUTS = ("prob", "logit", "hit")
"""What :meth:`Forwards.values` reads of each forwarded image: the softmax probability of the image's target
class (softmax of the class scores in the model's dtype, float32 for half precision), its class score, and 1.0
where the target is the arg-max class else 0.0."""


def _bits(images: torch.Tensor) -> torch.Tensor:
    """(B, F) int64 bit patterns of (B, ...) float images."""
    flat = images.detach().contiguous().reshape(images.shape[0], -1)
    view = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
            torch.bfloat16: torch.int16}[flat.dtype]
    return flat.view(view).to(torch.int64)


class Forwards:
    """The distinct perturbed images of one batch, forwarded once each.

    :param model: the model (restored exactly after every forward).
    :param x: (N, C, H, W) the batch's model inputs; perturbed images belong to one of them (its index).
    :param targets: (N,) the class read for each source image.
    :param batch_size: images per forward pass.

    ``add(index, images)`` registers (B, C, H, W) perturbed copies of source images ``index`` (B,) and returns
    their ids; ``values(ids, what)`` returns the float64 outputs (``what`` in :data:`OUTPUTS`) of those ids,
    forwarding what is still pending. Two images are the same when their source index and two independent 64-bit
    hashes of their bit patterns agree (random weights fixed once; a collision has probability about 2^-64).
    ``forwarded`` counts the images that went through the model.
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, batch_size: int = 64):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.model, self.batch_size = model, batch_size
        self.device, self.model_dtype = model_device_dtype(model, x)
        self.dtype = compute_dtype(x.dtype)
        self.x = x.detach().to(self.device, self.dtype)
        self.targets = torch.as_tensor(targets).reshape(-1).to(self.device, torch.long)
        features = self.x[0].numel()
        g = torch.Generator().manual_seed(0x5EED)
        self._weights = torch.randint(-2 ** 62, 2 ** 62, (2, features), generator=g).to(self.device)
        self._seen: dict = {}
        self._pending: list = []  # (id, index, image)
        self._out: list[torch.Tensor] = []  # per flushed block: (B, 3) float64, row = id (ids are given in order)
        self._next = 0
        self.forwarded = 0

    def add(self, index: torch.Tensor, images: torch.Tensor) -> list[int]:
        """Ids of (B, C, H, W) ``images``, perturbed copies of source images ``index`` (B,)."""
        images = images.to(self.device, self.dtype)
        index = torch.as_tensor(index).reshape(-1).to(self.device)
        bits = _bits(images)
        keys = torch.stack([(bits * w).sum(1) for w in self._weights], 1).tolist()
        out = []
        for row, (i, (h1, h2)) in enumerate(zip(index.tolist(), keys)):
            key = (i, h1, h2)
            got = self._seen.get(key)
            if got is None:
                got = self._seen[key] = self._next
                self._next += 1
                self._pending.append((got, i, images[row].clone()))  # frees the chunk
                if len(self._pending) >= self.batch_size:
                    self._flush()
            out.append(got)
        return out

    def source(self, index: Sequence[int]) -> list[int]:
        """Ids of the unperturbed source images ``index``."""
        idx = torch.as_tensor(list(index), dtype=torch.long, device=self.device)
        return self.add(idx, self.x[idx])

    def _flush(self) -> None:
        if not self._pending:
            return
        ids = [p[0] for p in self._pending]
        index = torch.tensor([p[1] for p in self._pending], device=self.device)
        batch = torch.stack([p[2] for p in self._pending])
        self._pending = []
        with preserved(self.model), torch.no_grad():
            self.model.eval()
            out = self.model(batch.to(self.model_dtype))
        tick("curve", len(ids))  # the sweep's progress bar moves per batch of perturbed images
        if not isinstance(out, torch.Tensor) or out.ndim < 2:
            raise InputError("the model must return (N, C) class scores (or (N, C, h, w)) for perturbation metrics")
        scores = class_logits(out)
        scores = scores.to(compute_dtype(scores.dtype))
        target = self.targets[index]
        if int(target.max()) >= scores.shape[1]:
            raise InputError(f"target class {int(target.max())} is out of range for a model with "
                             f"{scores.shape[1]} classes")
        prob = torch.softmax(scores, 1).gather(1, target[:, None])[:, 0]
        logit = scores.gather(1, target[:, None])[:, 0]
        hit = (scores.argmax(1) == target).float()
        self._out.append(torch.stack([prob, logit, hit], 1).double())
        self.forwarded += len(ids)

    def values(self, ids, what: str = "prob") -> torch.Tensor:
        """float64 outputs of ``ids`` (a nested list or an int tensor; the result has its shape)."""
        if what not in OUTPUTS:
            from ..errors import UnknownNameError

            raise UnknownNameError("forward output", what, OUTPUTS)
        self._flush()
        ids = torch.as_tensor(ids, dtype=torch.long)
        col = OUTPUTS.index(what)
        if len(self._out) > 1:  # one table of every forwarded image, in id order
            self._out = [torch.cat(self._out)]
        table = self._out[0] if self._out else torch.zeros(0, 3, dtype=torch.float64)
        return table[ids.reshape(-1).to(table.device), col].reshape(ids.shape).cpu()


# --------------------------------------------------------------------------------------------- building images
def feature_ranks(maps: torch.Tensor, channels: int, descending: bool = True) -> torch.Tensor:
    """(P, N, C*H*W) rank of every feature when (P, N, H, W) ``maps``, repeated over ``channels``, are sorted
    (descending: most salient first); ties go to the lower channel-major index, NaN last."""
    p, n, h, w = maps.shape
    flat = maps.detach().double().reshape(p, n, 1, h * w).expand(p, n, channels, h * w).reshape(p, n, -1)
    flat = flat.nan_to_num(nan=-torch.inf if descending else torch.inf)
    order = flat.sort(dim=-1, descending=descending, stable=True).indices
    return torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1]).expand_as(order))


def group_ranks(groups: torch.Tensor, scores: torch.Tensor, channels: int, descending: bool = True) -> torch.Tensor:
    """(P, N, C*H*W) rank of every feature's group: ``groups`` (N, H, W) long labels 0..G-1 (patches,
    superpixels), ``scores`` (P, N, G) per group, sorted (descending first; ties to the lower label)."""
    order = scores.sort(dim=-1, descending=descending, stable=True).indices
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1]).expand_as(order))
    p, n = scores.shape[:2]
    g = groups.reshape(1, n, -1).expand(p, n, -1).to(rank.device)
    pixel = rank.gather(-1, g)  # (P, N, H*W)
    return pixel.repeat(1, 1, channels)


def replaced(fw: Forwards, ranks: torch.Tensor, counts: Sequence[int], base: torch.Tensor,
             index: Optional[Sequence[int]] = None, chunk: int = 256) -> torch.Tensor:
    """Ids (P, N, K) of the images with the features of rank < ``counts[k]`` replaced by ``base`` (N, F) or
    (N, 1) (source image i's baseline values), registered with ``fw`` ``chunk`` images at a time. ``index``:
    the source images of the N rows of ``ranks`` and ``base`` (default: all of ``fw.x``)."""
    p, n, f = ranks.shape
    index = torch.arange(n) if index is None else torch.as_tensor(list(index), dtype=torch.long)
    index = index.to(fw.device)
    x = fw.x[index].reshape(n, f)
    base = base.to(x).expand(n, f)
    counts = torch.as_tensor(list(counts), dtype=torch.long)
    ids = torch.empty(p, n, len(counts), dtype=torch.long)
    step = max(1, chunk // n)
    for j in range(p):
        r = ranks[j].to(x.device)
        for start in range(0, len(counts), step):
            c = counts[start:start + step].to(x.device)
            changed = r[None] < c[:, None, None]  # (k, N, F)
            images = torch.where(changed, base[None], x[None]).reshape(-1, *fw.x.shape[1:])
            got = fw.add(index.repeat(len(c)), images)
            ids[j, :, start:start + len(c)] = torch.tensor(got).view(len(c), n).T
    return ids


def replaced_at(fw: Forwards, index: torch.Tensor, features: torch.Tensor, values: torch.Tensor,
                chunk: int = 256) -> list[int]:
    """Ids of B images: source image ``index[b]`` with its features ``features[b]`` (B, S) long set to
    ``values[b]`` ((B, 1) or (B, S)), registered with ``fw`` ``chunk`` images at a time."""
    out: list[int] = []
    index = torch.as_tensor(index).to(fw.device)
    features, values = features.to(fw.device), values.to(fw.device, fw.x.dtype).expand(features.shape)
    for start in range(0, len(index), chunk):
        i = index[start:start + chunk]
        flat = fw.x[i].reshape(len(i), -1).clone()
        flat.scatter_(1, features[start:start + chunk], values[start:start + chunk])
        out += fw.add(i, flat.view(len(i), *fw.x.shape[1:]))
    return out


def unit_trapezoid(curves: torch.Tensor) -> torch.Tensor:
    """Trapezoid area of (..., K) curves with unit spacing (NumPy's ``trapz(dx=1)``); 0 for a single point."""
    if curves.shape[-1] < 2:
        return torch.zeros(curves.shape[:-1], dtype=curves.dtype)
    return curves.sum(-1) - (curves[..., 0] + curves[..., -1]) / 2


def spearman_ties(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation along the last dimension in float64 with average ranks for ties (SciPy's
    ``spearmanr``); NaN where either side is constant."""
    return pearson(average_ranks(a.double()), average_ranks(b.double()))


# --------------------------------------------------------------------------------------------- imputation
OFFSETS = ((1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12), (0, -1, 1 / 6), (-1, -1, 1 / 12),
           (1, 0, 1 / 6), (-1, 0, 1 / 6))
"""ROAD's neighbours (row offset, column offset, weight): edges 1/6, corners 1/12."""


def linear_imputation(x: torch.Tensor, unknown: torch.Tensor, tol: float = 1e-10,
                      max_iter: Optional[int] = None) -> torch.Tensor:
    """ROAD's linear imputation (Rong et al. 2022): each unknown pixel becomes the weighted mean of its in-image
    8-neighbours (:data:`OFFSETS`), known neighbours fixed; the sparse linear system is solved per image and
    channel by conjugate gradients (Jacobi-preconditioned, float64) until every residual is below ``tol`` times
    its right-hand side. ``x`` (B, C, H, W), ``unknown`` (B, H, W) bool; returns float64 (B, C, H, W)."""
    x = x.double()
    b_, c, h, w = x.shape

    def conv(v):  # sum over the in-image neighbours of weight * value (shifted slices: float64 conv2d is slow)
        pad = torch.nn.functional.pad(v, (1, 1, 1, 1))
        return sum(wt * pad[..., 1 + dr:1 + dr + h, 1 + dc:1 + dc + w] for dr, dc, wt in OFFSETS)

    u = unknown.to(x.device)[:, None].double().expand(b_, c, h, w)
    s = conv(torch.ones(1, 1, h, w, dtype=torch.float64, device=x.device))

    def apply(v):  # A v on the unknowns
        return u * (s * v - conv(v * u))

    rhs = u * conv(x * (1 - u))
    sol = u * rhs / s  # a start: the known neighbours' weighted sum, normalised
    r = rhs - apply(sol)
    z = r / s
    d = z.clone()
    rz = (r * z).sum((-2, -1), keepdim=True)
    limit = (tol * rhs.abs().amax((-2, -1), keepdim=True)).clamp(min=1e-300)
    for it in range(max_iter or 4 * h * w):
        if it % 8 == 0 and bool((r.abs().amax((-2, -1), keepdim=True) <= limit).all()):
            break
        ad = apply(d)
        denom = (d * ad).sum((-2, -1), keepdim=True)
        alpha = torch.where(denom != 0, rz / denom, torch.zeros_like(denom))
        sol = sol + alpha * d
        r = r - alpha * ad
        z = r / s
        rz_new = (r * z).sum((-2, -1), keepdim=True)
        beta = torch.where(rz != 0, rz_new / rz, torch.zeros_like(rz))
        d = z + beta * d
        rz = rz_new
    return torch.where(u.bool(), sol, x)
