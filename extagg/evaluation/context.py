"""What a metric computes from: one batch's images, classes and maps, built once by the driver.

:class:`BatchContext` holds the model inputs, the class scores of one gradient-free pass, the explained class of
every image, and the maps of one saliency pass (every method at every layer, every layer combination, for the
explained class and for every extra target column a metric asked for). A metric reads ``ctx.maps_for(column)``
and asks for more only where it needs more: ``ctx.run_maps`` (another pass, e.g. on a randomised copy),
``ctx.work_model()`` (a deep copy of the model it may change, restored by ``ctx.restore``), ``ctx.curves``
(deletion / insertion curves of many maps, one forward per distinct curve image), ``ctx.forwards()`` (perturbed
images of every metric of the batch, each distinct one forwarded once), and the floors ``ctx.smooth_noise`` and
``ctx.cross_image``.
"""
from __future__ import annotations

import zlib
from typing import Callable, Optional, Sequence

import torch

from ..errors import InputError


def seed_of(*parts) -> int:
    """A deterministic 31-bit seed from ``parts`` (independent of the batch an image falls in)."""
    return zlib.crc32("|".join(map(str, parts)).encode()) & 0x7FFFFFFF


class BatchContext:
    """One batch, as every metric sees it. Attributes: ``model``, ``x`` (N, C, H, W model inputs), ``samples``,
    ``image_ids``, ``scores`` (N, C), ``explained`` (N,) long, ``keys`` [(method, layer)], ``size`` (H, W),
    ``seed``, ``registry``, ``settings`` (the run's shared settings: ``randomise``, ``class_map``, ...)."""

    def __init__(self, *, model, x, samples, scores, explained, keys, size, seed, registry, settings,
                 maps: Callable, work: Callable, companions: dict, blocks: Callable):
        self.model, self.x, self.samples = model, x, samples
        self.image_ids = [s.image_id for s in samples]
        self.scores, self.explained, self.keys = scores, explained, list(keys)
        self.size, self.seed, self.registry, self.settings = size, seed, registry, settings
        self._maps = maps
        self._work = work
        self._companions = companions
        self._blocks = blocks

    @property
    def n(self) -> int:
        return self.x.shape[0]

    # ----------------------------------------------------------------- maps of the shared pass
    def set_columns(self, columns: list[torch.Tensor], maps: dict) -> None:
        """Called by the driver: ``maps[key]`` is (N, T, H, W) for the T ``columns`` (N,) in order."""
        self._column_list = columns
        self._column_maps = maps

    def maps_for(self, column: Optional[torch.Tensor] = None) -> dict:
        """``{(method, layer): (N, H, W)}`` maps of the shared pass for the (N,) classes ``column`` (default: the
        explained classes). The column must be one the metric asked for through ``Metric.columns``."""
        column = self.explained if column is None else column
        for t, c in enumerate(self._column_list):
            if torch.equal(c, column.to(c.device)):
                return {k: m[:, t] for k, m in self._column_maps.items()}
        raise InputError("a metric read maps for a target column it did not declare in Metric.columns")

    def companion(self, key) -> Optional[str]:
        """The companion method of ``key`` (the identity check's real-layer twin), None if it has none."""
        return self._companions.get(key)

    def run_maps(self, model: torch.nn.Module, targets: torch.Tensor, methods: Optional[Sequence[str]] = None,
                 size: Optional[tuple[int, int]] = None, *, x: Optional[torch.Tensor] = None) -> dict:
        """Another saliency pass of ``model`` on the batch: ``{(method, layer): (N, T, H, W)}`` for (N, T) or (N,)
        ``targets``, with the run's layer combinations, resized to ``size`` (default: the input size). ``x``:
        (N, C, H, W) inputs to explain instead of the batch's (a shifted or perturbed copy of ``ctx.x``)."""
        if targets.ndim == 1:
            targets = targets[:, None]
        if x is not None and tuple(x.shape) != tuple(self.x.shape):
            raise InputError(f"run_maps: x must have the batch's shape {tuple(self.x.shape)}, got {tuple(x.shape)}")
        return self._maps(model, self.x if x is None else x, methods, targets, size or self.size)

    # ----------------------------------------------------------------- a copy of the model
    def work_model(self) -> torch.nn.Module:
        """A deep copy of the model (made once per run) that a metric may change; :meth:`restore` resets it."""
        return self._work()[0]

    def restore(self) -> None:
        """Load the trained weights back into :meth:`work_model`."""
        work, trained = self._work()
        work.load_state_dict(trained)

    def blocks(self) -> list[str]:
        """The blocks the randomisation test re-initialises, output first (one definition for every driver:
        :func:`extagg.evaluation.randomisation.cascading_order` of the run's ``randomise`` setting)."""
        return self._blocks(self.x)

    # ----------------------------------------------------------------- curves
    def curves(self, maps: list[torch.Tensor], targets: torch.Tensor, mode: str, steps: int, baseline: str,
               batch_size: int = 64) -> list[list[float]]:
        """Deletion or insertion AUC of every map (P maps of (N, H, W)) -> P lists of N floats; one forward per
        distinct curve image (the endpoints and equally ranked maps share theirs)."""
        from .faithfulness import deletion_insertion_grid, trapezoid

        curves = deletion_insertion_grid(self.model, self.x, maps, targets, mode=mode, steps=steps,
                                         baseline=baseline, batch_size=batch_size)
        return [floats(auc) for auc in trapezoid(curves)]

    def forwards(self, batch_size: int = 64):
        """The batch's :class:`~extagg.evaluation.perturbation.Forwards` (made on first use, shared by every
        metric of the batch): perturbed copies of the images, each distinct one forwarded once, reading the
        explained classes."""
        if self.explained is None:
            raise InputError("ctx.forwards() reads the explained classes of the shared pass; a per-image metric "
                             "(Metric.per_image) has none: declare the metric without per_image to use it")
        cache = self.__dict__.setdefault("_forwards", {})
        if batch_size not in cache:
            from .perturbation import Forwards

            cache[batch_size] = Forwards(self.model, self.x, self.explained, batch_size)
        return cache[batch_size]

    # ----------------------------------------------------------------- floors
    def smooth_noise(self, key, maps: torch.Tensor, salt: str = "") -> torch.Tensor:
        """(N, H, W) random maps exactly as smooth as ``maps`` (the maps of ``key``): amplitude-adjusted Fourier
        surrogates (Theiler et al. 1992). Each keeps its map's amplitude spectrum (so its spatial autocorrelation,
        its smoothness) with random phases, then takes its map's own values in the surrogate's rank order (so its
        histogram). What any map of this smoothness and value distribution scores by chance. Seeded per (seed,
        image id, method, layer), so the floor never depends on the batch."""
        return rearranged(maps, self.smooth_noise_order(key, maps, salt))

    def smooth_noise_order(self, key, maps: torch.Tensor, salt: str = "") -> torch.Tensor:
        """(N, H * W) the pixel each pixel of :meth:`smooth_noise`'s maps takes its value from: the surrogate is
        ``rearranged(maps, order)``, so any per-value statistic of the map (its ranks, its ``abs``) rearranged
        the same way is the surrogate's, without ranking the surrogate again."""
        return surrogate_order(maps, [seed_of(self.seed, image, key[0], key[1], salt) for image in self.image_ids])

    @staticmethod
    def cross_image(maps: torch.Tensor) -> Optional[torch.Tensor]:
        """(N, H, W) maps shifted by one image (image i gets image i+1's map, the last gets the first's): the
        partner of the cross-image floor; None for a batch of one image (no partner: the floor is NaN)."""
        if maps.shape[0] < 2:
            return None
        return maps.roll(-1, 0)


def surrogate_order(maps: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """(N, H * W): the amplitude-adjusted Fourier surrogate of each of the (N, H, W) ``maps`` (one seed per map) as
    a rearrangement of the map's own pixels (see :func:`surrogates`)."""
    m = maps.detach().to(torch.float64)
    h, w = m.shape[-2:]
    noise = torch.stack([torch.rand((h, w), dtype=torch.float64, generator=torch.Generator().manual_seed(s))
                         for s in seeds]).to(m.device)
    phase = torch.fft.rfft2(noise - noise.mean((-2, -1), keepdim=True))
    amplitude = torch.fft.rfft2(m - m.mean((-2, -1), keepdim=True)).abs()
    shaped = torch.fft.irfft2(amplitude * torch.exp(1j * phase.angle()), s=(h, w))
    # the surrogate's pixel of rank j takes the map's value of rank j
    order = shaped.reshape(len(seeds), -1).argsort(dim=-1, stable=True)
    source = m.reshape(len(seeds), -1).sort(dim=-1, stable=True).indices
    return torch.empty_like(source).scatter_(-1, order, source)


def rearranged(maps: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """(..., H, W) ``maps`` with pixel i taking the value of pixel ``order[..., i]`` (flat indices)."""
    return maps.reshape(*order.shape[:-1], -1).gather(-1, order).reshape(maps.shape)


def surrogates(maps: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """Amplitude-adjusted Fourier surrogates of (N, H, W) ``maps`` (one seed per map): each keeps its map's values
    and amplitude spectrum with random phases; NaN maps stay NaN."""
    return rearranged(maps.detach(), surrogate_order(maps, seeds))


def values_of(keys, measures: dict, subset: str = "all") -> list:
    """:class:`~extagg.metric_spec.Value` records from ``{measure: (K, N) tensor}`` (or the same laid out flat,
    key-major): row j is ``keys[j]``, column i image i of the batch; measure by measure, key by key."""
    from ..metric_spec import Value

    out = []
    for measure, t in measures.items():
        rows = t.detach().to("cpu", torch.float64).reshape(len(keys), -1).tolist() if keys else []
        for k, row in zip(keys, rows):
            out += [Value(k, i, subset, measure, v) for i, v in enumerate(row)]
    return out


def floats(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.detach().reshape(-1).to("cpu", torch.float64)]
