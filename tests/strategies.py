"""All hypothesis strategies of the test suite: small CNN architectures and method strings."""
from __future__ import annotations

import attrs
import torch
from hypothesis import strategies as st
from torch import nn

from extagg.contributions import Factored, PatchGeometry


@attrs.frozen
class ConvSpec:
    cin: int
    cout: int
    k: int
    stride: int
    padding: int
    dilation: int
    groups: int


@attrs.frozen
class NetSpec:
    """A Sequential of [conv, bn?, relu]* blocks, then optionally GAP + Linear, in float64."""

    convs: tuple[ConvSpec, ...]
    batchnorm: bool
    size: int
    classes: int
    seed: int
    head: str  # "gap" (GAP -> Linear) or "flatten" (Flatten -> Linear: gradients vary in space)

    def build(self) -> nn.Sequential:
        torch.manual_seed(self.seed)
        layers: list[nn.Module] = []
        for c in self.convs:
            layers.append(nn.Conv2d(c.cin, c.cout, c.k, c.stride, c.padding, c.dilation, c.groups))
            if self.batchnorm:
                bn = nn.BatchNorm2d(c.cout)
                with torch.no_grad():
                    bn.running_mean.uniform_(-0.5, 0.5)
                    bn.running_var.uniform_(0.5, 2.0)
                    bn.weight.uniform_(0.5, 1.5)
                    bn.bias.uniform_(-0.2, 0.2)
                layers.append(bn)
            layers.append(nn.ReLU())
        if self.head == "gap":
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(self.convs[-1].cout, self.classes)]
        else:
            h = self.size
            for c in self.convs:
                h = (h + 2 * c.padding - c.dilation * (c.k - 1) - 1) // c.stride + 1
            layers += [nn.Flatten(), nn.Linear(self.convs[-1].cout * h * h, self.classes)]
        return nn.Sequential(*layers).double().eval()

    def images(self, n: int = 2) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + 1)
        return torch.randn(n, self.convs[0].cin, self.size, self.size, generator=g, dtype=torch.float64)


@st.composite
def conv_specs(draw, cin: int) -> ConvSpec:
    groups = draw(st.sampled_from([1, 1, 2]))
    if cin % groups:
        groups = 1
    cout = groups * draw(st.integers(1, 3))
    k = draw(st.sampled_from([1, 3]))
    return ConvSpec(cin, cout, k, draw(st.sampled_from([1, 1, 2])), draw(st.integers(0, k // 2 + 1)),
                    draw(st.sampled_from([1, 1, 2])), groups)


@st.composite
def net_specs(draw, head: str | None = None) -> NetSpec:
    size = draw(st.integers(7, 10))
    cin = draw(st.sampled_from([1, 2, 3]))
    convs = []
    for _ in range(draw(st.integers(1, 3))):
        c = draw(conv_specs(cin))
        convs.append(c)
        cin = c.cout
    spec = NetSpec(tuple(convs), draw(st.booleans()), size, draw(st.integers(2, 5)), draw(st.integers(0, 10_000)),
                   head or draw(st.sampled_from(["gap", "flatten"])))
    h = size
    for c in spec.convs:  # keep only nets whose maps stay at least 1x1
        h = (h + 2 * c.padding - c.dilation * (c.k - 1) - 1) // c.stride + 1
        if h < 1:
            return draw(net_specs(head))
    return spec


def names(registry, kind: str):
    return st.sampled_from(sorted(registry.components[kind]))


@st.composite
def method_texts(draw, registry) -> str:
    """Random valid method strings with random case, spacing and (default or explicit) parameters."""
    def spell(spec) -> str:
        parts = []
        for p in spec.params:
            if p.required or draw(st.booleans()):
                value = p.default if not p.required else 3
                if p.type is int and p.name == "k":
                    value = draw(st.sampled_from([1, 3, 5]))
                parts.append(f"{p.name} = {str(value).lower() if isinstance(value, bool) else value}")
        name = draw(st.sampled_from([spec.name, spec.name.upper(), spec.name.title()]))
        return name + (f"({', '.join(parts)})" if parts else "")

    space = draw(st.sampled_from(["", " ", "  "]))
    head = spell(draw(st.sampled_from(list(registry.extractors.values()))))
    pre = [spell(draw(st.sampled_from(list(registry.filters.values())))) for _ in range(draw(st.integers(0, 2)))]
    agg = spell(draw(st.sampled_from(list(registry.aggregators.values()))))
    post = [spell(draw(st.sampled_from(list(registry.filters.values())))) for _ in range(draw(st.integers(0, 2)))]
    return f"{space}+{space}".join([head, *pre, agg, *post])


# ----------------------------------------------------------------------------- contributions
@st.composite
def factored(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    k = draw(st.sampled_from([1, 2, 3]))
    stride, dilation = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2]))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
    mode = draw(st.sampled_from(["zeros", "zeros", "replicate", "reflect"]))
    size = draw(st.integers(5, 8))
    if mode == "reflect":
        pad = tuple(min(p, size - 1) for p in pad)
    geo = PatchGeometry((k, k), (stride, stride), pad, (dilation, dilation), groups, mode)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 999)))
    x = torch.randn(2, groups * draw(st.integers(1, 2)), size, size, generator=gen, dtype=torch.float64)
    out_h = (size + pad[2] + pad[3] - dilation * (k - 1) - 1) // stride + 1
    out_w = (size + pad[0] + pad[1] - dilation * (k - 1) - 1) // stride + 1
    if min(out_h, out_w) < 1:
        return draw(factored())
    g = torch.randn(2, draw(st.integers(1, 2)), groups * draw(st.integers(1, 2)), out_h, out_w, generator=gen,
                    dtype=torch.float64)
    return Factored(signed(draw, g), signed(draw, x), geo)


def signed(draw, v: torch.Tensor) -> torch.Tensor:
    """``v``, or a one-signed version of it (ReLU outputs: the closed forms skip the exactly-zero negative part)."""
    sign = draw(st.sampled_from(["mixed", "mixed", "nonneg", "nonpos", "zero"]))
    return {"mixed": v, "nonneg": v.clamp(min=0), "nonpos": v.clamp(max=0), "zero": v * 0}[sign]


@st.composite
def depthwise(draw, dtype=torch.float64):
    """A depthwise :class:`Factored` with zero padding (one gradient entry and one input channel per block), of
    any kernel, stride, dilation and asymmetric padding, non-square maps, 1-2 images and 1-3 targets: the form
    that the native depthwise kernel computes."""
    kh, kw = draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 3]))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = tuple(draw(st.integers(0, 4)) for _ in range(4))
    hh, ww = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    out_h = (hh + pad[2] + pad[3] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (ww + pad[0] + pad[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if min(out_h, out_w) < 1:
        return draw(depthwise(dtype))
    c, n, t = draw(st.integers(1, 5)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 999)))
    x = torch.randn(n, c, hh, ww, generator=gen, dtype=dtype)
    g = torch.randn(n, t, c, out_h, out_w, generator=gen, dtype=dtype)
    geo = PatchGeometry((kh, kw), stride, pad, dilation, c)
    return Factored(signed(draw, g), signed(draw, x), geo)


@st.composite
def sweep_configs(draw):
    """A valid :class:`extagg.sweep.SweepConfig` (names are not resolved against a model here)."""
    from extagg.sweep.config import COMBINE_MODES, COMBINE_WEIGHTINGS, NO_ANNOTATION_METRICS, SweepConfig

    words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.*+-_", min_size=1, max_size=12)
    combos = st.lists(st.tuples(st.sampled_from(COMBINE_MODES), st.sampled_from(COMBINE_WEIGHTINGS)), max_size=3)
    return SweepConfig(
        model="resnet18", random_weights=True,
        limit=draw(st.none() | st.integers(1, 50)),
        methods=tuple(draw(st.lists(words, min_size=1, max_size=4))),
        exclude=tuple(draw(st.lists(words, max_size=2))),
        layers=tuple(draw(st.lists(words, min_size=1, max_size=4))),
        metrics=tuple(draw(st.lists(st.sampled_from(NO_ANNOTATION_METRICS), min_size=1, max_size=5, unique=True))),
        combine=tuple(f"{m}:{w}" for m, w in draw(combos)),
        targets=draw(st.sampled_from(["predicted", "label", "3"])),
        steps=draw(st.integers(1, 64)), seed=draw(st.integers(0, 2**31)),
        tolerance=draw(st.floats(0, 50, allow_nan=False)), batch_size=draw(st.integers(1, 16)),
        randomisation=draw(st.sampled_from(["cascading", "independent", "both"])),
        run_dir=draw(words), progress=draw(st.booleans()), figures=draw(st.booleans()),
    )
