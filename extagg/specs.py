"""Immutable records that plugins register and the registry hands out.

Every record is a frozen attrs class. Plugins build them without an ``origin``; the registry fills in the
origin (plugin name, distribution, version) with :func:`attrs.evolve` when it stores them.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import attrs

REQUIRED: Any = attrs.make_class("Required", [], repr=False)()
"""Sentinel default of a :class:`Param` that the method string must give."""


@attrs.frozen
class Origin:
    """Where a component came from: the pluggy plugin name, its distribution and version (None if unknown)."""

    plugin: str
    distribution: Optional[str] = None
    version: Optional[str] = None

    def __str__(self) -> str:
        if not self.distribution:
            return self.plugin
        version = f" {self.version}" if self.version else ""
        return f"{self.plugin} ({self.distribution}{version})"


def _tuple_of(x: Any) -> tuple:
    return tuple(x)


@attrs.frozen
class Param:
    """A parameter a component accepts in method strings, e.g. ``dwconv(k=5)``.

    ``type`` is one of ``int``, ``float``, ``bool``, ``str``; ``check`` may return an error message for a bad value.
    ``choices`` (optional) lists every value the parameter accepts (the default among them): any other value is
    refused with the list and a "did you mean", and the design space enumerates each choice
    (``pooled-scaling(g=relu)+sum`` next to ``pooled-scaling+sum``).
    """

    name: str
    type: type = int
    default: Any = REQUIRED
    doc: str = ""
    check: Optional[Callable[[Any], Optional[str]]] = attrs.field(default=None, eq=False, repr=False)
    choices: tuple = attrs.field(default=(), converter=_tuple_of)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def _tuple(x: Any) -> tuple:
    return tuple(x)


@attrs.frozen(kw_only=True)
class Extractor:
    """Phase 1: the per-location contribution to the gradient of a spatially shared parameter.

    ``fn(capture, **params)`` receives an :class:`extagg.capture.LayerCapture` and returns a
    :class:`extagg.contributions.Dense` or :class:`extagg.contributions.Factored`.
    ``needs`` is a subset of ``{"output", "input", "grad"}``: what the capture must hold.
    ``applies_to`` restricts the layer's module type (None: any module, and the ``"input"`` layer);
    ``applies_to_input=True`` admits the ``"input"`` layer as well when ``applies_to`` is set.
    ``neighbourhood=True`` declares that the contribution reads a spatial neighbourhood of each location (kxk
    patches of the map); such an extractor does not apply at a token layer (:mod:`extagg.tokens`).
    ``factored`` declares the form ``fn`` returns: True for a :class:`~extagg.contributions.Factored` (outer-product)
    contribution, False for any other form; phase 2 refuses a result that contradicts the declaration. None
    (the default: undeclared) lets it return either; planning (:func:`extagg.sweep.plan.is_slow`) then finds out
    by calling ``fn`` on a small synthetic capture, and assumes factored if that fails.
    """

    name: str
    fn: Callable[..., Any] = attrs.field(eq=False, repr=False)
    doc: str = ""
    formula: str = ""
    params: tuple[Param, ...] = attrs.field(default=(), converter=_tuple)
    needs: frozenset = attrs.field(default=frozenset({"output", "grad"}), converter=frozenset)
    applies_to: Optional[tuple[type, ...]] = None
    applies_to_input: bool = False
    neighbourhood: bool = False
    factored: Optional[bool] = None
    origin: Optional[Origin] = None
    kind = "extractor"


@attrs.frozen(kw_only=True)
class Filter:
    """An elementwise function, used before the aggregator (on each contribution) or after it (on the map).

    ``sign_profile = (a, b)`` declares ``f(x) = a*x`` for ``x > 0`` and ``f(x) = -b*x`` for ``x < 0`` with
    ``a, b`` in ``{-1, 0, 1}`` (relu is ``(1, 0)``, abs ``(1, 1)``); it lets aggregators use closed forms on
    factored contributions. Leave it None for any other function: the generic chunked path is then used.
    """

    name: str
    fn: Callable[..., Any] = attrs.field(eq=False, repr=False)
    doc: str = ""
    formula: str = ""
    params: tuple[Param, ...] = attrs.field(default=(), converter=_tuple)
    sign_profile: Optional[tuple[int, int]] = None
    origin: Optional[Origin] = None
    kind = "filter"


@attrs.frozen(kw_only=True)
class Aggregator:
    """Phase 2: reduce each location's contribution vector to one number.

    ``reduce(c, dim)`` reduces a dense tensor along ``dim``. ``closed_form(contribution, profile)`` may compute
    the same result on a :class:`extagg.contributions.Factored` contribution whose pre-filters compose to the
    sign ``profile`` without materialising it; it returns None where it has no closed form.
    ``reads(profile, **params)`` (optional) names the contribution statistics that ``closed_form`` will read for
    that profile (``"sum"``, ``"sq"``, ``"signed"``, ``"signed_sq"``, ``"extremes"``, ``"min_abs"``), so that a
    sweep can compute all the statistics its methods need in one pass over the data.
    ``nonnegative``: the result is always >= 0 (a later relu/abs is a no-op). ``preserves_nonnegative``:
    nonnegative contributions give a nonnegative result (``sum``, ``max``; formerly ``keeps_sign``, still
    accepted). ``abs_invariant``: an ``abs`` pre-filter changes nothing.
    """

    name: str
    reduce: Callable[..., Any] = attrs.field(eq=False, repr=False)
    doc: str = ""
    formula: str = ""
    params: tuple[Param, ...] = attrs.field(default=(), converter=_tuple)
    closed_form: Optional[Callable[..., Any]] = attrs.field(default=None, eq=False, repr=False)
    reads: Optional[Callable[..., Any]] = attrs.field(default=None, eq=False, repr=False)
    nonnegative: bool = False
    preserves_nonnegative: bool = False
    abs_invariant: bool = False
    keeps_sign: bool = attrs.field(default=False, repr=False)
    origin: Optional[Origin] = None
    kind = "aggregator"

    def __attrs_post_init__(self) -> None:
        if self.keeps_sign:  # the former name of preserves_nonnegative
            object.__setattr__(self, "preserves_nonnegative", True)


@attrs.frozen(kw_only=True)
class NamedMethod:
    """A named method: ``name`` stands for the composition ``expansion`` (e.g. ``normgrad`` -> ``conv1x1+norm``)."""

    name: str
    expansion: str
    doc: str = ""
    reference: str = ""
    origin: Optional[Origin] = None
    kind = "method"


@attrs.frozen(kw_only=True)
class Modifier:
    """A pass modifier written before the composition, ``meta(lr=0.002):normgrad``.

    ``fn(model, images, targets, **params)`` returns a context manager inside which extagg runs the forward
    and backward pass of every method that shares this modifier. ``targets`` is an (N, T) long tensor or None.
    The context's value may be a dict ``{parameter or buffer name: tensor}``: the pass then runs the model
    through :func:`torch.func.functional_call` with those tensors in place of its own.

    ``stateless=True`` declares that ``fn`` never writes the model's tensors (it yields replacements instead), so
    extagg skips its weight snapshot and a graph the user holds stays valid; with False ``fn`` may write weights
    in place and extagg restores them bit for bit afterwards. ``per_example=True`` declares that one pass explains
    one (image, target) pair: :func:`extagg.saliency` then refuses larger batches and
    :func:`extagg.saliency_per_example` runs one pass per pair.

    A multi-pass modifier (``smooth``, ``ig``) gives ``samples(images, **params)`` -> :class:`Samples` instead of
    (or besides) ``fn``: extagg runs the method on every sample input and reduces as the :class:`Samples` says
    (see :mod:`extagg.multipass`). A method carries at most one multi-pass modifier; one-pass modifiers written
    with it are entered once, on the real images, and every sample pass runs inside them.
    """

    name: str
    fn: Optional[Callable[..., Any]] = attrs.field(default=None, eq=False, repr=False)
    doc: str = ""
    params: tuple[Param, ...] = attrs.field(default=(), converter=_tuple)
    per_example: bool = False
    stateless: bool = False
    samples: Optional[Callable[..., Any]] = attrs.field(default=None, eq=False, repr=False)
    origin: Optional[Origin] = None
    kind = "modifier"

    @property
    def multipass(self) -> bool:
        """Whether the modifier asks for several passes (it gives ``samples``)."""
        return self.samples is not None


SAMPLE_REDUCTIONS = ("mean", "mean_sq", "var", "grad")
"""How a multi-pass modifier's sample passes are reduced: the weighted mean of the maps, of their squares, their
variance, or (``"grad"``) the weighted sum of the gradients, used with the real input's activations."""


@attrs.frozen(kw_only=True)
class Samples:
    """What a multi-pass modifier asks for, given the images of one call.

    ``count`` sample inputs; ``make(start, stop)`` builds samples ``start .. stop - 1`` as a
    (stop - start, N, C, H, W) tensor (so extagg can batch them in chunks of ``chunk`` samples, one forward and one
    backward per chunk, and the result never depends on the chunking); ``weights`` (``count`` numbers, None:
    ``1 / count`` each) weigh them in the ``reduce`` (one of :data:`SAMPLE_REDUCTIONS`; ``"var"`` ignores
    weights). ``input_activation``: with ``reduce="grad"``, what the ``"input"`` layer's activation is (None: the
    images); Integrated Gradients gives ``images - baseline``.
    """

    count: int
    make: Callable[[int, int], Any] = attrs.field(eq=False, repr=False)
    reduce: str = "mean"
    weights: Optional[tuple] = None
    chunk: int = 16
    input_activation: Optional[Any] = attrs.field(default=None, eq=False, repr=False)


Alias = NamedMethod
"""The former name of :class:`NamedMethod`, kept for plugins that import it."""

COMPONENT_TYPES = {cls.kind: cls for cls in (Extractor, Filter, Aggregator, NamedMethod, Modifier)}
"""Record class of each component kind."""

PARAM_TYPES = (int, float, bool, str)
"""The types a :class:`Param` may declare (what a method string can spell)."""
CAPTURED = frozenset({"output", "input", "grad"})
"""What an extractor may declare in ``needs``."""


def _param_problems(param: Param) -> list[str]:
    if not isinstance(param, Param):
        return [f"params must be extagg.plugin.Param records, got {param!r}"]
    out = []
    if param.type not in PARAM_TYPES:
        shown = getattr(param.type, "__name__", repr(param.type))
        out.append(f"parameter {param.name!r} has type {shown}; a method string can give "
                   + ", ".join(t.__name__ for t in PARAM_TYPES))
    elif not param.required:
        value, kind = param.default, param.type
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool)) \
            or (kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            out.append(f"parameter {param.name!r} of type {kind.__name__} has the default {value!r}")
    if param.choices:
        wrong = [c for c in param.choices if not isinstance(c, param.type) or isinstance(c, bool) != (param.type is bool)]
        if wrong:
            out.append(f"parameter {param.name!r} of type {param.type.__name__} lists the choices {wrong!r}")
        elif not param.required and param.default not in param.choices:
            out.append(f"parameter {param.name!r} has the default {param.default!r}, not one of its choices "
                       f"{list(param.choices)!r}")
    if param.check is not None and not callable(param.check):
        out.append(f"parameter {param.name!r} has a check that is not callable: {param.check!r}")
    return out


def record_problems(record) -> list[str]:
    """What is wrong with a registered record, as sentences (empty if nothing): parameter types and defaults,
    callables, ``needs``, ``applies_to``, ``sign_profile``. The registry raises them with the plugin's name."""
    out = []
    for param in getattr(record, "params", ()):
        out += _param_problems(param)
    if isinstance(record, Modifier) and record.fn is None and record.samples is None:
        out.append("a modifier needs fn (a context for its pass) or samples (several passes), or both")
    for attr in ("fn", "reduce", "closed_form", "reads", "samples"):
        value = getattr(record, attr, None)
        if value is not None and not callable(value):
            out.append(f"{attr} must be callable, got {value!r}")
    if isinstance(record, Extractor):
        if not record.needs <= CAPTURED:
            out.append(f"needs {sorted(record.needs)} may only name {sorted(CAPTURED)}")
        if record.applies_to is not None and (not isinstance(record.applies_to, tuple) or not record.applies_to
                                              or not all(isinstance(t, type) for t in record.applies_to)):
            out.append(f"applies_to must be None or a non-empty tuple of module classes, got {record.applies_to!r}")
        if record.factored not in (None, True, False):
            out.append(f"factored must be None, True or False, got {record.factored!r}")
        if record.applies_to_input and record.applies_to is None:
            out.append("applies_to_input=True needs applies_to (without it every layer, the input included, fits)")
    if isinstance(record, Filter) and record.sign_profile is not None:
        profile = record.sign_profile
        if not (isinstance(profile, (tuple, list)) and len(profile) == 2
                and all(isinstance(a, int) and not isinstance(a, bool) and a in (-1, 0, 1) for a in profile)):
            out.append(f"sign_profile must be None or a pair (a, b) with a, b in (-1, 0, 1), got {profile!r}")
    if isinstance(record, Aggregator) and record.reads is not None and record.closed_form is None:
        out.append("declares reads but no closed_form (reads names what the closed form reads)")
    return out
