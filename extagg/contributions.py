"""Alias of the contribution forms in :mod:`extagg.phase2`, for plugins that import them from here.

New code imports them from :mod:`extagg.plugin`, the one public surface for plugin authors.
"""
from .phase2 import (IDENTITY, Contribution, Dense, Factored, PatchGeometry, Product, Profile, Scaled, Stat,
                     apply_profile, compose_profiles, factored_max, factored_min, factored_norm, factored_sum,
                     reads_max, reads_min, reads_norm, reads_sum)

__all__ = [
    "IDENTITY", "Contribution", "Dense", "Factored", "PatchGeometry", "Product", "Profile", "Scaled", "Stat",
    "apply_profile", "compose_profiles", "factored_max", "factored_min", "factored_norm", "factored_sum",
    "reads_max", "reads_min", "reads_norm", "reads_sum",
]
