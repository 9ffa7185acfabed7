"""``extagg sweep``: every method x layer x metric on a model and a data set, resumable, sharded, with figures.

Python::

    from extagg.sweep import SweepConfig, sweep
    result = sweep(SweepConfig(methods=("gradcam", "normgrad"), layers=("stages",), run_dir="runs/a"))
    result.rows            # reduced typed rows: method (as asked), canonical, layer, metric, measure, subset,
                           # value, n, nan, std (sample), direction; floors as floor:... subsets
    result.value("gradcam", "_conv_head", "deletion")

``SweepConfig()`` is the embedded default (EfficientNet-Lite0 from its wheel, scikit-image photos, the metrics
that need no annotations). See docs/sweep.md for the outputs, resuming and ``torchrun``.
"""
from ..lazy import lazy_package

__all__ = ["DEFAULT_LAYERS", "DEFAULT_METHODS", "METRICS", "SweepConfig", "SweepResult", "sweep"]

lazy_package(__name__, {".config": ("DEFAULT_LAYERS", "DEFAULT_METHODS", "METRICS", "SweepConfig"),
                        ".runner": ("SweepResult", "sweep")})  # imported on first use: `extagg sweep --help` is fast
