"""The result of :func:`extagg.saliency`: maps keyed by ``(method, layer)``."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Iterator, Optional

import torch


class SaliencyMaps(Mapping):
    """Maps keyed by ``(canonical method, layer)``; look-ups accept the method as the user spelled it.

    Each value has shape ``(N, T, h, w)``: T = 1 for one target per image, at the layer's resolution unless
    ``resize`` was given. ``targets`` is the (N, T) tensor of explained classes (None for a custom objective)
    and ``scores`` the (N, T) objective values.
    """

    def __init__(self, registry, maps: dict, spelled: dict, targets: Optional[torch.Tensor], scores: torch.Tensor):
        self._registry = registry
        self._maps = maps
        self._spelled = spelled
        self.targets = targets
        self.scores = scores

    def with_spellings(self, spellings: dict) -> "SaliencyMaps":
        """The same maps, also answering to the method spellings ``{as written: canonical string}``."""
        return SaliencyMaps(self._registry, self._maps, {**self._spelled, **spellings}, self.targets, self.scores)

    def _key(self, key) -> tuple[str, str]:
        if isinstance(key, str):
            layers = {layer for _, layer in self._maps}
            if len(layers) != 1:
                raise KeyError(f"give (method, layer): this result has layers {sorted(layers)}")
            key = (key, next(iter(layers)))
        if not (isinstance(key, tuple) and len(key) == 2):
            raise KeyError(f"keys are (method, layer) tuples, got {key!r}")
        method, layer = key
        canonical = self._spelled.get(method) if isinstance(method, str) else None
        if canonical is None:
            canonical = self._registry.canonical(method)
        return canonical, layer

    def __getitem__(self, key) -> torch.Tensor:
        k = self._key(key)
        if k not in self._maps:
            raise KeyError(f"no map for {k}; available: {sorted(self._maps)[:20]}")
        return self._maps[k]

    def __contains__(self, key) -> bool:
        try:
            return self._key(key) in self._maps
        except Exception:  # noqa: BLE001 - a malformed key is simply not contained
            return False

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._maps)

    def __len__(self) -> int:
        return len(self._maps)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(m for m, _ in self._maps))

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(layer for _, layer in self._maps))

    def __repr__(self) -> str:
        return f"SaliencyMaps({len(self.methods)} methods x {len(self.layers)} layers)"
