"""Alias of :mod:`extagg.phase2.closed_forms`, for plugins that import the closed-form helpers from here.

New code imports them from :mod:`extagg.plugin`, the one public surface for plugin authors.
"""
from .phase2.closed_forms import (IDENTITY, Profile, apply_profile, compose_profiles, factored_max, factored_min,
                                  factored_norm, factored_sum, reads_max, reads_min, reads_norm, reads_sum)

__all__ = [
    "IDENTITY", "Profile", "apply_profile", "compose_profiles", "factored_max", "factored_min", "factored_norm",
    "factored_sum", "reads_max", "reads_min", "reads_norm", "reads_sum",
]
