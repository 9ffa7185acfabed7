"""Built-in multi-pass modifiers: ``smooth`` (SmoothGrad), ``smoothsq``, ``vargrad`` and ``ig`` (Integrated Gradients).

* ``smooth(n=50,sigma=0.15,seed=0,chunk=0):M`` -- the mean of method M's maps over ``n`` noisy copies
  ``x + N(0, (sigma * (max x - min x))^2)`` (Smilkov et al. 2017: sigma as a fraction of each image's range);
  ``smoothsq`` the mean of the squared maps, ``vargrad`` their (population) variance (Adebayo et al. 2018).
  Copy ``j``'s noise comes from its own generator seeded from ``(seed, j)``: the same call gives the same maps,
  whatever the chunking, on any device.
* ``ig(steps=32,baseline=0.0,chunk=0):M`` -- the gradient at every layer replaced by its trapezoid average over
  ``steps`` points ``b + alpha (x - b)``, ``alpha = 0, 1/(steps-1), ..., 1`` (weights ``1/(steps-1)``, halved at
  both ends); at the input the activation is ``x - b``, elsewhere the real input's. ``ig:scaling+sum`` at the
  input is Integrated Gradients (Sundararajan et al. 2017) with a constant baseline ``b``.

``chunk``: samples per forward/backward (0: as many as keep ``chunk * N <= 32`` images). Caps: ``n`` and
``steps`` at most :data:`extagg.multipass.MAX_SAMPLES` (10000), ``chunk`` at most
:data:`extagg.multipass.MAX_CHUNK` (1024); a larger value is refused when the method string is parsed. Memory
grows with ``chunk``, never with ``n`` or ``steps``: samples, path points and weights are made chunk by chunk.
See :mod:`extagg.multipass` for how they run and compose.
"""
from __future__ import annotations

import math

import torch

from extagg.plugin import LazyWeights, Modifier, Param, Samples, chunk_problem, count_problem, hookimpl, noise


def _at_least_two(x):
    return "must be >= 2 (the trapezoid rule needs both ends of the path)" if x < 2 else count_problem(x)


def _nonnegative_finite(x):
    return None if math.isfinite(x) and x >= 0 else "must be a finite number >= 0"


def _finite(x):
    return None if math.isfinite(x) else "must be a finite number"


def noisy_samples(images: torch.Tensor, n: int, sigma: float, seed: int, chunk: int, reduce: str) -> Samples:
    """``n`` copies of ``images`` with Gaussian noise of standard deviation ``sigma * (max - min)`` per image."""
    flat = images.detach().reshape(images.shape[0], -1)
    scale = (sigma * (flat.amax(1) - flat.amin(1))).reshape(-1, *([1] * (images.ndim - 1)))

    def make(start: int, stop: int) -> torch.Tensor:
        if sigma == 0:
            return images.detach().expand(stop - start, *images.shape)
        eps = torch.stack([noise(tuple(images.shape), seed, j) for j in range(start, stop)])
        return images.detach() + eps.to(device=images.device, dtype=images.dtype) * scale

    return Samples(count=n, make=make, reduce=reduce, chunk=chunk)


def trapezoid_weight(steps: int):
    """Sample ``j``'s trapezoid weight on ``steps`` equally spaced points of [0, 1]: ``1 / (steps - 1)``, halved
    at both ends."""
    def weight(j: int) -> float:
        return (0.5 if j in (0, steps - 1) else 1.0) / (steps - 1)
    return weight


def path_samples(images: torch.Tensor, steps: int, baseline: float, chunk: int) -> Samples:
    """The straight path from the constant ``baseline`` image to ``images``, ``alpha_j = j / (steps - 1)`` (in
    float64, then the images' dtype), trapezoid weights; both made per chunk."""
    x = images.detach()
    base = torch.full_like(x, baseline)

    def make(start: int, stop: int) -> torch.Tensor:
        alphas = torch.arange(start, stop, dtype=torch.float64) / (steps - 1)
        a = alphas.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * x.ndim))
        return base + a * (x - base)

    return Samples(count=steps, make=make, reduce="grad", weights=LazyWeights(steps, trapezoid_weight(steps)),
                   chunk=chunk, input_activation=x - base)


def _noisy(reduce: str):
    def samples(images, n: int = 50, sigma: float = 0.15, seed: int = 0, chunk: int = 0):
        return noisy_samples(images, n, sigma, seed, chunk, reduce)
    return samples


def _ig(images, steps: int = 32, baseline: float = 0.0, chunk: int = 0):
    return path_samples(images, steps, baseline, chunk)


def _noise_params():
    return [
        Param("n", int, 50, "number of noisy copies (1..extagg.multipass.MAX_SAMPLES)", check=count_problem),
        Param("sigma", float, 0.15, "noise standard deviation as a fraction of each image's range (max - min)",
              check=_nonnegative_finite),
        Param("seed", int, 0, "seed of the noise (copy j uses a generator seeded from (seed, j))"),
        Param("chunk", int, 0, "copies per forward/backward (0: keep chunk * N <= 32 images; at most "
              "extagg.multipass.MAX_CHUNK)", check=chunk_problem),
    ]


NOISY = {
    "smooth": ("mean", "SmoothGrad: the mean of the method's maps over n noisy copies of the input."),
    "smoothsq": ("mean_sq", "SmoothGrad-squared: the mean of the squared maps over n noisy copies."),
    "vargrad": ("var", "VarGrad: the variance of the method's maps over n noisy copies of the input."),
}


@hookimpl
def register_modifiers(register):
    for name, (reduce, doc) in NOISY.items():
        register(Modifier(name=name, samples=_noisy(reduce), stateless=True, params=_noise_params(),
                          doc=doc + " Noise N(0, (sigma * (max - min))^2) per image, seeded."))
    register(Modifier(
        name="ig",
        samples=_ig,
        stateless=True,
        params=[
            Param("steps", int, 32, "points on the path from the baseline to the input (trapezoid rule; "
                  "2..extagg.multipass.MAX_SAMPLES)", check=_at_least_two),
            Param("baseline", float, 0.0, "the constant baseline image's value", check=_finite),
            Param("chunk", int, 0, "path points per forward/backward (0: keep chunk * N <= 32 images; at most "
                  "extagg.multipass.MAX_CHUNK)", check=chunk_problem),
        ],
        doc="Integrated Gradients: every layer's gradient replaced by its trapezoid average along the straight "
            "path from a constant baseline to the input; at the input the activation is x - baseline, so "
            "ig:scaling+sum there is IG.",
    ))


