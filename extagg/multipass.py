"""Multi-pass modifiers: one method evaluated on several sample inputs and reduced (SmoothGrad, VarGrad, IG).

A modifier record with ``samples`` (:class:`extagg.specs.Samples`) asks for ``count`` sample inputs built from
the call's images. The pass then runs as follows, inside the one-pass modifiers written with it (entered once,
on the real images: ``smooth:meta:normgrad`` smooths the method on the meta-stepped weights):

1. one pass on the real images: the scores and the target matrix reported, and the targets every sample
   explains (``targets=None``: the real image's predicted class, never a noisy copy's); with ``reduce="grad"``
   also the real activations;
2. the samples in chunks of ``chunk`` (x N images): one forward and one batched backward per chunk, so memory
   is bounded by ``chunk * N`` images whatever ``count`` is;
3. the reduction: ``"mean"``, ``"mean_sq"``, ``"var"`` (population variance) of each method's (N, T, h, w)
   maps, resized first if ``resize`` is asked; or ``"grad"``: the weighted sum of the gradients at each layer
   replaces the gradient in the real pass's capture, and every method's extractor runs on it once. At the
   ``"input"`` layer the activation is ``Samples.input_activation`` (IG: ``x - baseline``), at any other layer
   the real input's activation. So ``ig:scaling+sum`` at the input is Integrated Gradients, and at a hidden
   layer it is ``a(x) * mean path gradient`` (not Captum's layer IG, which interpolates the layer's own
   activation).

A method carries at most one multi-pass modifier. ``forward_kwargs`` are passed unchanged to every chunk.

**Memory and caps.** Nothing is held per sample: the weights are read chunk by chunk (``Samples.weights`` may be
any sequence that slices, such as :class:`LazyWeights`), and the reductions are running sums that take the
samples one at a time in index order (a weighted sum; Welford's update for ``"var"``), so the arithmetic, and
with it the result, is the same bit for bit whatever the chunking, given the same per-sample maps (a batched
forward of another size may round a convolution differently, at float rounding). A call runs at most
:data:`MAX_SAMPLES` samples and at most :data:`MAX_CHUNK` per pass; more is an :class:`InputError` naming the
cap, like the method parser's caps (:data:`extagg.method.MAX_LENGTH`). The caps bound the time a method string
can ask for; the memory is bounded by the chunk.
"""
from __future__ import annotations

from typing import Optional

import attrs
import torch

from .capture import INPUT
from .errors import InputError, PluginContractError, raised_in
from .phase2 import evaluate_layer
from .specs import SAMPLE_REDUCTIONS, Samples
from .tokens import usable

AUTO_BATCH = 32
"""Images per chunk when a modifier leaves ``chunk`` at 0: ``max(1, AUTO_BATCH // N)`` samples."""
MAX_SAMPLES = 10_000
"""Most samples one multi-pass modifier may ask for in one call (``smooth(n=...)``, ``ig(steps=...)``)."""
MAX_CHUNK = 1024
"""Most samples per forward/backward (``chunk=...``); one pass holds ``chunk * N`` images."""


def count_problem(value: int):
    """The check of a sample count parameter: an integer in ``1..MAX_SAMPLES``."""
    return None if 1 <= value <= MAX_SAMPLES else f"must be in 1..{MAX_SAMPLES} (extagg.multipass.MAX_SAMPLES)"


def chunk_problem(value: int):
    """The check of a ``chunk`` parameter: 0 (automatic) or an integer up to ``MAX_CHUNK``."""
    return None if 0 <= value <= MAX_CHUNK else \
        f"must be in 0..{MAX_CHUNK} (0: automatic; extagg.multipass.MAX_CHUNK)"


class LazyWeights:
    """A sequence of ``count`` sample weights computed on demand, ``weight(j)`` for sample ``j``: a
    ``Samples.weights`` that holds nothing per sample. Supports ``len`` and integer or slice indexing."""

    def __init__(self, count: int, weight):
        self.count, self.weight = count, weight

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self.weight(j) for j in range(*index.indices(self.count)))
        if not -self.count <= index < self.count:
            raise IndexError(f"sample {index} of {self.count}")
        return self.weight(index % self.count)


def multipass_of(registry, modifiers: tuple):
    """``(record, call)`` of the multi-pass modifier among ``modifiers``, None if there is none; two are an
    :class:`InputError`."""
    found = [(registry.modifiers[c.name], c) for c in modifiers if registry.modifiers[c.name].multipass]
    if len(found) > 1:
        raise InputError("a method takes at most one multi-pass modifier, got "
                         + ", ".join(repr(str(c)) for _, c in found) + "; write one of them")
    return found[0] if found else None


def _checked(spec, samples, images: torch.Tensor) -> Samples:
    where = f"modifier {spec.name!r} (from {spec.origin})"
    if not isinstance(samples, Samples):
        raise PluginContractError(f"{where} samples() returned {type(samples).__name__}; "
                                  "expected extagg.plugin.Samples")
    problems = []
    if isinstance(samples.count, bool) or not isinstance(samples.count, int) or samples.count < 1:
        problems.append(f"count {samples.count!r} is not an int >= 1")
    if samples.reduce not in SAMPLE_REDUCTIONS:
        problems.append(f"reduce {samples.reduce!r} is not one of {SAMPLE_REDUCTIONS}")
    if samples.weights is not None and len(samples.weights) != samples.count:
        problems.append(f"{len(samples.weights)} weights for {samples.count} samples")
    if isinstance(samples.chunk, bool) or not isinstance(samples.chunk, int) or samples.chunk < 0:
        problems.append(f"chunk {samples.chunk!r} is not an int >= 0")
    if problems:
        raise PluginContractError(f"{where} returned bad Samples: " + "; ".join(problems))
    if samples.count > MAX_SAMPLES:
        raise InputError(f"{where} asks for {samples.count} samples; at most {MAX_SAMPLES} run in one call "
                         "(extagg.multipass.MAX_SAMPLES)")
    if samples.chunk > MAX_CHUNK:
        raise InputError(f"{where} asks for {samples.chunk} samples per pass; at most {MAX_CHUNK} "
                         "(extagg.multipass.MAX_CHUNK)")
    return samples


def _make(spec, samples: Samples, start: int, stop: int, images: torch.Tensor) -> torch.Tensor:
    with raised_in(spec, "samples (its make)"):
        x = samples.make(start, stop)
    want = (stop - start, *images.shape)
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != want:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise PluginContractError(f"modifier {spec.name!r} (from {spec.origin}) made samples {start}..{stop - 1} "
                                  f"as {got}; expected a tensor of shape {want}")
    return x.to(device=images.device, dtype=images.dtype).reshape(-1, *images.shape[1:])


class _Moments:
    """Running weighted sums (``mean``, ``mean_sq``, ``grad``) or a population variance (Welford) of samples
    taken one at a time in index order, so that the chunking never changes the arithmetic."""

    def __init__(self, reduce: str):
        self.reduce, self.total, self.count, self.mean, self.m2 = reduce, None, 0, None, None

    def add(self, batch: torch.Tensor, weights: torch.Tensor) -> None:
        """Add the (k, ...) ``batch`` of consecutive samples with their (k,) ``weights``."""
        for value, weight in zip(batch, weights.tolist()):
            if self.reduce != "var":
                part = (value * value if self.reduce == "mean_sq" else value) * weight
                self.total = part if self.total is None else self.total + part
                continue
            self.count += 1
            if self.mean is None:
                self.mean, self.m2 = value.clone(), torch.zeros_like(value)
                continue
            delta = value - self.mean
            self.mean = self.mean + delta / self.count
            self.m2 = self.m2 + delta * (value - self.mean)

    def result(self) -> torch.Tensor:
        return self.m2 / self.count if self.reduce == "var" else self.total


def chunk_weights(samples: Samples, start: int, stop: int) -> torch.Tensor:
    """The float64 weights of samples ``start .. stop - 1`` (``1 / count`` each where ``weights`` is None)."""
    if samples.weights is None:
        return torch.full((stop - start,), 1.0 / samples.count, dtype=torch.float64)
    return torch.as_tensor(tuple(samples.weights[start:stop]), dtype=torch.float64)


def evaluate_samples(registry, run, request, sampler, group: list, *, plans: dict, closed_forms: bool):
    """The maps of one multi-pass group, ``({(canonical method, layer): map}, scores, matrix)``.

    ``run(images, targets, needs, backward=True)`` is one forward (and backward) inside the pass's context (see
    :func:`extagg.engine.capture_pass`); ``sampler`` is :func:`multipass_of`'s pair; ``group`` the
    (method, layer) pairs."""
    spec, call = sampler
    images = request.images
    n = images.shape[0]
    with raised_in(spec, "samples"):
        made = spec.samples(images, **call.kwargs)
    samples = _checked(spec, made, images)
    needs: dict[str, set[str]] = {}
    by_layer: dict[str, list] = {}
    for method, layer in group:
        needs.setdefault(layer, set()).update(registry.extractors[method.extractor.name].needs)
        by_layer.setdefault(layer, []).append(method)
    path_grad = samples.reduce == "grad"
    # the real images: scores, targets and (for "grad") activations; their own gradient is never used
    real, scores, matrix = run(images, request.targets, needs if path_grad else {}, backward=False)
    targets = request.targets if request.targets is not None else matrix
    count = samples.count
    chunk = samples.chunk or max(1, AUTO_BATCH // n)
    sums: dict = {}
    for start in range(0, count, chunk):
        stop = min(count, start + chunk)
        k = stop - start
        x = _make(spec, samples, start, stop, images)
        captures, _, _ = run(x, None if targets is None else targets.repeat(k, 1), needs)
        w = chunk_weights(samples, start, stop)
        for layer in list(captures):
            capture = captures.pop(layer)
            if path_grad:
                sums.setdefault(layer, _Moments("grad")).add(capture.grad.reshape(k, n, *capture.grad.shape[1:]), w)
                continue
            here = usable(registry, capture, by_layer[layer], request.mismatched)
            for name, m in evaluate_layer(registry, capture, here, plans=plans,
                                          closed_forms=closed_forms, size=request.size).items():
                sums.setdefault((name, layer), _Moments(samples.reduce)).add(m.reshape(k, n, *m.shape[1:]), w)
    if not path_grad:
        return {key: acc.result() for key, acc in sums.items()}, scores, matrix
    maps = {}
    for layer, capture in real.items():
        output = capture.output
        if layer == INPUT and samples.input_activation is not None:
            output = torch.as_tensor(samples.input_activation).to(device=output.device, dtype=output.dtype)
        capture = attrs.evolve(capture, output=output, grad=sums[layer].result().to(capture.output.dtype))
        here = usable(registry, capture, by_layer[layer], request.mismatched)
        for name, m in evaluate_layer(registry, capture, here, plans=plans, closed_forms=closed_forms,
                                      size=request.size).items():
            maps[name, layer] = m
    return maps, scores, matrix


def sample_seed(seed: int, index: int) -> int:
    """The generator seed of sample ``index`` under the call's ``seed`` (independent of the chunking)."""
    return (int(seed) * 1_000_003 + int(index)) % (2 ** 63)


def noise(shape: tuple, seed: int, index: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Standard normal noise of sample ``index``, drawn on the CPU in float64 (the same on every device)."""
    g = torch.Generator().manual_seed(sample_seed(seed, index))
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype or torch.float64)
