"""The sweep's configuration: one frozen record, the same for ``extagg sweep`` and :func:`extagg.sweep.sweep`.

``SweepConfig()`` with no arguments is the embedded default: the pretrained EfficientNet-Lite0 from its wheel,
real photos shipped with scikit-image, and the metrics that need no annotations. :meth:`SweepConfig.to_dict`
and :meth:`SweepConfig.from_dict` round-trip through JSON; :data:`RESULT_FIELDS` are the fields that change the
numbers (a run directory refuses a configuration that differs in any of them).
"""
from __future__ import annotations

from typing import Any, Optional

import attrs

from ..errors import InputError

DEFAULT_MODEL = "efficientnet-lite0"
""":data:`extagg.models.DEFAULT_MODEL`, spelt here so that reading the configuration imports no torch."""

METRICS = ("pointing", "sensitivity", "randomisation", "identity", "deletion", "insertion")
"""The built-in metrics (``extagg metrics`` lists every registered one, plugins' included); ``pointing`` needs
localisation data (VOC, COCO)."""
NO_ANNOTATION_METRICS = ("sensitivity", "randomisation(checkpoints=6)", "identity", "deletion", "insertion")
"""The default metrics: those that need no annotations. Randomisation re-initialises every block in turn (21 on
EfficientNet-Lite0) and measures after 6 of them, the last included, to keep the default sweep's cost."""
DATA = ("skimage", "voc", "coco", "folder", "custom")
"""``custom``: samples handed to :func:`extagg.sweep.sweep` (Python only)."""
SKIMAGE_PHOTOS = ("chelsea", "coffee", "camera")
"""Photos that ship with scikit-image (CC0 / public domain) of objects EfficientNet-Lite0 recognises (Egyptian cat
0.79, espresso 0.88, tripod 0.94); ``camera`` is grey, read as RGB."""
COMBINE_MODES = ("sum", "product")
COMBINE_WEIGHTINGS = ("uniform", "linear")
RANDOMISATION_MODES = ("cascading", "independent", "both")
SAVE_MAPS = ("none", "thumbs", "full")
"""``--save-maps``: the maps saved per batch for the report's gallery (:mod:`extagg.sweep.saved_maps`)."""
DEFAULT_METHODS = ("gradcam", "linear-approx", "scaling+norm", "normgrad", "meta(lr=0.002):normgrad")
DEFAULT_LAYERS = ("stages", "_conv_head")


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    if any(not isinstance(v, str) or not v.strip() for v in items):
        raise InputError(f"expected non-empty strings, got {value!r}")
    return tuple(v.strip() for v in items)


def _positive(name: str):
    def check(_inst, _attr, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    return check


def _one_of(name: str, choices: tuple[str, ...]):
    def check(_inst, _attr, value):
        if value not in choices:
            from ..errors import UnknownNameError

            raise UnknownNameError(name, str(value), choices)
    return check


def parse_combination(text: str) -> tuple[str, str]:
    """``"sum:uniform"`` -> ``("sum", "uniform")``; modes sum/product, weightings uniform/linear."""
    mode, sep, weighting = text.partition(":")
    weighting = weighting or "uniform"
    if mode not in COMBINE_MODES or weighting not in COMBINE_WEIGHTINGS:
        raise InputError(f"a layer combination is MODE:WEIGHTING with MODE in {', '.join(COMBINE_MODES)} and "
                         f"WEIGHTING in {', '.join(COMBINE_WEIGHTINGS)} (e.g. 'sum:uniform'), got {text!r}")
    return mode, weighting


def metric_name(text: str) -> str:
    """The name of a metric call ``name(k=v,...)`` (syntax checked; the registry checks the name)."""
    from ..method import scan

    raw = scan(text)
    if raw.modifiers or len(raw.calls) != 1:
        raise InputError(f"a metric is one name with optional parameters, e.g. 'deletion(steps=8)', got {text!r}")
    return raw.calls[0].name


def _check_metrics(_inst, _attr, value):
    if not value:
        raise InputError(f"give at least one metric, e.g. {', '.join(METRICS)} (see `extagg metrics`)")
    for m in value:
        metric_name(m)
    if len(set(value)) != len(value):
        raise InputError(f"a metric is given twice in {list(value)}")


def _check_combine(_inst, _attr, value):
    for c in value:
        parse_combination(c)


def _check_seed(_inst, _attr, value):
    from ..util import check_seed

    check_seed(value)


def _check_device(_inst, _attr, value):
    if value is not None:
        from ..util import check_device

        check_device(value, "device (None: cuda if available, else cpu)")


def _check_targets(_inst, _attr, value):
    if value in ("predicted", "label"):
        return
    try:
        ok = int(value) >= 0
    except ValueError:
        ok = False
    if not ok:
        raise InputError(f"targets must be 'predicted', 'label' or a class index >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class SweepConfig:
    """Everything a sweep needs; every field has a default (the embedded default sweep).

    Model: ``model`` (``efficientnet-lite0`` or a torchvision name), ``weights`` (a torchvision weights name or a
    ``state_dict`` file), ``random_weights`` (explicitly allow a torchvision model without weights).
    Data: ``data`` (``skimage``: the photos in :data:`SKIMAGE_PHOTOS`; ``voc``, ``coco``, ``folder``: read from
    ``root``), ``limit`` (first N images), ``sample`` (N images drawn with ``seed`` from those, for a quick look
    at a large set; both change the numbers, so a run directory records them). What to compute: ``methods`` and ``exclude`` (method strings or fnmatch
    patterns over the design space), ``layers`` (names, patterns or groups, see :mod:`extagg.layer_select`),
    ``metrics`` (from :data:`METRICS`), ``combine`` (layer combinations ``MODE:WEIGHTING``, scored like layers),
    ``targets`` (``predicted``, ``label`` or a class index), ``class_map`` (a JSON file mapping the data set's classes to
the model's, as ``extagg evaluate --class-map``; needed for labelled data whose classes are not the model's).
``metrics`` are metric calls in the method grammar (``sensitivity(pairing=random)``). Metric settings, which fill the
built-in metrics' parameters a metric string leaves out: ``steps`` and ``baseline`` of the
    deletion/insertion curves, ``randomise`` (blocks; default: the top-level children with parameters) and
    ``randomisation`` mode, ``hog_cell``, ``tolerance`` (pointing, pixels), ``identity_extractor`` (the real-layer
    extractor the identity check compares each method with, at the layers it applies to; None: the identity
    metric's own default, ``conv``, a Conv2d's own weight gradient, as in the paper; a plugin's real-layer extractor
    works the same way; :meth:`resolved` fills it in before it is recorded). Execution: ``batch_size`` (images per
    pass), ``curve_batch`` (images per forward pass of the curves), ``seed``, ``run_dir``, ``device``,
    ``progress``, ``figures``, ``workers`` (processes decoding images from disk while the model runs; None:
    min(4, CPUs), 0: in the main process; never changes a number), ``save_maps`` (``none``, ``thumbs``: small downsampled maps, ``full``: maps at the
    input size, saved per batch for the report's gallery, see :mod:`extagg.sweep.saved_maps`; compared on resume,
    so every batch of a run directory has the same kind of maps). ``explainers``: the names of the external
    explainers handed to :func:`extagg.sweep.sweep` (``explainers={name: callable}``, Python only), scored as methods at the layer
    ``"external"``; recorded like every result field, so a changed set of names is a changed configuration. A
    callable has no fingerprint: on resume the sweep trusts that a name still means the same explainer.
    """

    model: str = DEFAULT_MODEL
    weights: Optional[str] = None
    random_weights: bool = False
    data: str = attrs.field(default="skimage", validator=_one_of("data source", DATA))
    root: Optional[str] = None
    limit: Optional[int] = None
    sample: Optional[int] = None
    methods: tuple[str, ...] = attrs.field(default=DEFAULT_METHODS, converter=_strings)
    exclude: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    layers: tuple[str, ...] = attrs.field(default=DEFAULT_LAYERS, converter=_strings)
    metrics: tuple[str, ...] = attrs.field(default=NO_ANNOTATION_METRICS, converter=_strings,
                                           validator=_check_metrics)
    combine: tuple[str, ...] = attrs.field(default=("sum:linear",), converter=_strings,
                                           validator=_check_combine)
    targets: str = attrs.field(default="predicted", converter=str, validator=_check_targets)
    steps: int = attrs.field(default=8, validator=_positive("steps"))
    baseline: str = "blur"
    randomise: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    randomisation: str = attrs.field(default="cascading", validator=_one_of("randomisation mode", RANDOMISATION_MODES))
    hog_cell: int = attrs.field(default=16, validator=_positive("hog_cell"))
    tolerance: float = 15.0
    identity_extractor: Optional[str] = attrs.field(default=None, converter=attrs.converters.optional(str))
    class_map: Optional[str] = None
    explainers: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    batch_size: int = attrs.field(default=4, validator=_positive("batch_size"))
    curve_batch: int = attrs.field(default=64, validator=_positive("curve_batch"))
    seed: int = attrs.field(default=0, validator=_check_seed)
    run_dir: str = "extagg-sweep"
    device: Optional[str] = attrs.field(default=None, validator=_check_device)
    progress: bool = True
    figures: bool = True
    save_maps: str = attrs.field(default="thumbs", validator=_one_of("save_maps", SAVE_MAPS))
    workers: Optional[int] = None

    def __attrs_post_init__(self):
        if not self.methods and not self.explainers:
            raise InputError("give at least one method (a method string or an fnmatch pattern)")
        if not self.layers:
            raise InputError("give at least one layer (a name, a pattern or a group such as 'stages')")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 1):
            raise InputError(f"limit must be an integer >= 1 or None, got {self.limit!r}")
        if self.sample is not None and (isinstance(self.sample, bool) or not isinstance(self.sample, int)
                                        or self.sample < 1):
            raise InputError(f"sample must be an integer >= 1 or None, got {self.sample!r}")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 0):
            raise InputError(f"workers must be an integer >= 0 (0: decode in the main process) or None (min(4, "
                             f"CPUs)), got {self.workers!r}")
        if self.data in ("voc", "coco", "folder") and not self.root:
            raise InputError(f"--data {self.data} reads from disk: give its folder with --root DIR")
        if self.data == "skimage" and self.root:
            raise InputError("--root is for --data voc|coco|folder; the skimage photos ship with scikit-image")
        if any(metric_name(m) == "pointing" for m in self.metrics) and self.data not in ("voc", "coco", "custom"):
            raise InputError(f"the pointing metric needs localisation data (--data voc or coco), not {self.data!r}; "
                             f"drop it from --metrics")
        if self.weights is not None and self.random_weights:
            raise InputError("give either --weights or --random-weights, not both")
        if self.model == DEFAULT_MODEL and (self.weights is not None or self.random_weights):
            raise InputError(f"{DEFAULT_MODEL} ships its own pretrained weights; drop --weights/--random-weights")

    def metric_defaults(self) -> dict:
        """{metric name: {parameter: value}}: the options (``steps``, ``baseline``, ...) that fill the built-in
        metrics' parameters where a metric string leaves them out (``deletion(steps=4)`` wins over ``--steps``)."""
        curves = {"steps": self.steps, "baseline": self.baseline}
        return {"deletion": curves, "insertion": curves, "pointing": {"tolerance": self.tolerance},
                "identity": {} if self.identity_extractor is None else {"extractor": self.identity_extractor},
                "randomisation": {"mode": self.randomisation, "hog_cell": self.hog_cell}}

    def check_weights(self) -> None:
        """Refuse to load a torchvision model by name without weights unless ``random_weights`` says so."""
        if self.model != DEFAULT_MODEL and self.weights is None and not self.random_weights:
            raise InputError(f"--model {self.model} without --weights would explain a randomly initialised network; "
                             "give --weights (e.g. DEFAULT or a state_dict file) or --random-weights to do it anyway")

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field (tuples as lists)."""
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in attrs.fields(SweepConfig) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, d: dict) -> "SweepConfig":
        """The config of :meth:`to_dict` (unknown keys are an error)."""
        names = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            from ..errors import UnknownNameError

            raise UnknownNameError("configuration field", unknown[0], names)
        return cls(**d)

    def resolved(self, registry) -> "SweepConfig":
        """This config with the settings left to a metric's own default (None) filled in from ``registry``'s
        metric, as a run directory records them (so a recorded value means the same whatever a later default)."""
        identity = registry.metrics.get("identity")
        if self.identity_extractor is not None or identity is None:
            return self
        default = next((p.default for p in identity.params if p.name == "extractor"), None)
        return self if not isinstance(default, str) else attrs.evolve(self, identity_extractor=default)

    def result_dict(self) -> dict:
        """The fields that change the numbers (:data:`RESULT_FIELDS`)."""
        full = self.to_dict()
        return {k: full[k] for k in RESULT_FIELDS}


RESULT_FIELDS = tuple(f.name for f in attrs.fields(SweepConfig)
                      if f.name not in ("run_dir", "device", "progress", "figures", "workers"))
