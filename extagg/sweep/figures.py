"""Figures of a finished sweep (matplotlib, ``pip install extagg[figures]``), written under ``RUN_DIR/figures``.

* ``metric_vs_layer.png``: each metric's headline mean (± standard error, std / sqrt(n)) against the layer and the
  layer combinations, one line per method (the paper's Fig. 3 layout), with the metric's floors as thinner lines.

Every panel names the measure and the way it is better on its value axis, the subset and the number of images in
its title; methods appear as asked, with the canonical string where it differs; text is 9 pt or more at 100 dpi.
* ``grid.png``: every extractor x aggregator (with a closed form) on the first image at up to three layers
  (the paper's splash figure).
* ``combination.png``: each method's best single layer against each layer combination, per metric.
* ``ranking.png``: methods ranked by their best layer, per metric, in each measure's declared direction, with the
  floors marked.
"""
from __future__ import annotations

import math
from pathlib import Path

from .results import headline_tables


def _plt():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


FONT = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
        "legend.fontsize": 9, "legend.title_fontsize": 9, "figure.titlesize": 11}
"""Text sizes of every figure: legible at 100% zoom (9 pt and up at the saved dpi)."""
DPI = 100
FLOOR_STYLES = {"floor:cross-image": "--", "floor:smooth-noise": ":", "floor:centre": "-."}
FLOOR_MARKERS = {"floor:cross-image": "|", "floor:smooth-noise": "x", "floor:centre": "d"}


def _short(layer: str, width: int = 18) -> str:
    layer = layer.replace("combine:", "combine ")
    return layer if len(layer) <= width else "…" + layer[-(width - 1):]


def _n(h) -> str:
    """The images behind each mean: ``n = 40`` (``n = 38-40`` where some maps are undefined)."""
    ns = sorted({r.n for r in h.table.values()})
    return f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}-{ns[-1]}" if ns else "n = 0"


def _title(h) -> str:
    return f"{h.metric}\n[{h.subset}], {_n(h)} images, mean ± s.e.m."


def _axis(h) -> str:
    """The measure and the way it is better, for the value axis."""
    return f"{h.measure} ({h.direction.arrow} {h.direction.phrase})"


def _sem(r) -> float:
    """Standard error of a reduced row's mean: sample std / sqrt(n) (NaN where n < 2: no bar is drawn)."""
    return r.std / math.sqrt(r.n) if r.n > 1 and math.isfinite(r.std) else math.nan


def _name(plan, method: str) -> str:
    """The method as asked, with its canonical string where that differs (``gradcam = pooled-scaling+sum+relu``)."""
    asked = plan.layout.asked.get(method, method)
    return asked if asked == method else f"{asked} = {method}"


def metric_vs_layer(plt, plan, rows, path: Path) -> Path:
    """Each metric's headline mean (± s.e.m.) against the layer, then the layer combinations after a dotted rule,
    one line per method; its floors as thinner lines of the same colour."""
    heads = headline_tables(plan, rows)
    cols = min(3, len(heads))
    nrows = math.ceil(len(heads) / cols)
    layers = [*plan.layers, *plan.combinations, *plan.layout.external_layers()]
    width = max(5.2, 0.55 * len(layers) + 1.6)
    fig, axes = plt.subplots(nrows, cols, figsize=(width * cols, 4.4 * nrows + 0.9), squeeze=False)
    floors_seen: dict = {}
    for ax, h in zip(axes.flat, heads):
        for method in plan.methods:
            xs = [i for i, layer in enumerate(layers) if (method, layer) in h.table]
            if not xs:
                continue
            cells = [h.table[method, layers[i]] for i in xs]
            line = ax.errorbar(xs, [r.value for r in cells], yerr=[_sem(r) for r in cells], marker="o", ms=4, lw=1.4,
                               capsize=3, label=_name(plan, method)).lines[0]
            for floor, table in h.floors.items():
                fx = [i for i in xs if (method, layers[i]) in table]
                floors_seen[floor] = FLOOR_STYLES.get(floor, "--")
                ax.plot(fx, [table[method, layers[i]].value for i in fx], ls=floors_seen[floor], lw=1.0,
                        color=line.get_color(), alpha=0.7)
        if plan.combinations:
            ax.axvline(len(plan.layers) - 0.5, color="grey", ls=":", lw=1)
        ax.set_xticks(range(len(layers)), [_short(layer) for layer in layers], rotation=35, ha="right")
        ax.set_xlim(-0.5, len(layers) - 0.5)
        ax.set_title(_title(h))
        ax.set_ylabel(_axis(h))
        ax.set_xlabel("layer" + (" | layer combination (mode:weighting)" if plan.combinations else ""))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(heads):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for floor, style in floors_seen.items():
        handles.append(plt.Line2D([], [], color="black", ls=style, lw=1.0))
        labels.append(f"floor: {floor.removeprefix('floor:')}")
    ncol = min(3, len(labels))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False)
    fig.tight_layout(rect=(0, (0.25 + 0.22 * math.ceil(len(labels) / ncol)) / (4.4 * nrows + 0.9), 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _best(h, method: str, layers=None):
    """(row, layer) of the method's best layer by the measure's direction, or None."""
    cells = [(r, layer) for (m, layer), r in h.table.items() if m == method and (layers is None or layer in layers)
             and math.isfinite(r.value)]
    return min(cells, key=lambda c: h.direction.key(c[0].value)) if cells else None


def ranking(plt, plan, rows, path: Path) -> Path:
    """Methods ranked by their best layer (mean ± s.e.m.), per metric, in the measure's direction (best on top),
    with the floors of that layer marked."""
    heads = headline_tables(plan, rows)
    label_width = max(len(f"{_name(plan, m)} @ {_short(layer)}") for m in plan.methods
                      for layer in [*plan.layers, *plan.combinations])
    panel = 3.6 + 0.075 * label_width
    cols = min(2, len(heads))
    nrows = math.ceil(len(heads) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(panel * cols, (0.45 * len(plan.methods) + 2.0) * nrows),
                             squeeze=False)
    for ax, h in zip(axes.flat, heads):
        best = {m: b for m in plan.methods for b in [_best(h, m)] if b is not None}
        order = sorted(best, key=lambda m: h.direction.key(best[m][0].value))
        ax.barh(range(len(order)), [best[m][0].value for m in order], xerr=[_sem(best[m][0]) for m in order],
                color="tab:blue", capsize=3)
        for floor, table in h.floors.items():
            ax.scatter([table[m, best[m][1]].value if (m, best[m][1]) in table else math.nan for m in order],
                       range(len(order)), marker=FLOOR_MARKERS.get(floor, "|"), s=80, color="tab:orange"
                       if floor.endswith("cross-image") else "black", label=f"floor: {floor[6:]}", zorder=3)
        ax.set_yticks(range(len(order)), [f"{_name(plan, m)} @ {_short(best[m][1])}" for m in order])
        ax.invert_yaxis()
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(_title(h))
        ax.set_xlabel(_axis(h))
        if h.floors:
            ax.legend(loc="best", framealpha=0.8)
    for ax in list(axes.flat)[len(heads):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def combination(plt, plan, rows, path: Path):
    """Each method's best single layer against each layer combination (means ± s.e.m.), per metric."""
    heads = [h for h in headline_tables(plan, rows) if not plan.layout.companions.get(h.metric)]
    if not plan.combined or not heads:
        return None
    methods = [m for m in plan.methods if m in plan.combined]
    fig, axes = plt.subplots(1, len(heads), figsize=(max(4.6, 1.1 * len(methods) + 2.0) * len(heads), 5.2),
                             squeeze=False)
    width = 0.8 / (1 + len(plan.combinations))
    for ax, h in zip(axes.flat, heads):
        singles = [_best(h, m, plan.combined[m]) for m in methods]
        ax.bar([i - 0.4 + width / 2 for i in range(len(methods))], [b[0].value if b else math.nan for b in singles],
               width, yerr=[_sem(b[0]) if b else math.nan for b in singles], capsize=3, label="best single layer",
               color="grey")
        for j, label in enumerate(plan.combinations, 1):
            cells = [h.table.get((m, label)) for m in methods]
            ax.bar([i - 0.4 + width * (j + 0.5) for i in range(len(methods))],
                   [r.value if r else math.nan for r in cells], width,
                   yerr=[_sem(r) if r else math.nan for r in cells], capsize=3, label=_short(label, 40))
        ax.set_xticks(range(len(methods)), [_name(plan, m) for m in methods], rotation=30, ha="right")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(_title(h))
        ax.set_ylabel(_axis(h))
        ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def grid(plt, plan, model, preprocess, sample, registry, path: Path):
    """Extractor x aggregator maps of one image at up to three of the sweep's layers."""
    import torch

    from ..engine import saliency
    from ..evaluation.common import model_inputs
    from ..viz import normalise
    from .plan import is_slow

    extractors = [e for e, spec in registry.extractors.items()
                  if spec.applies_to is None and not any(p.required for p in spec.params)]
    aggregators = [a for a, spec in registry.aggregators.items() if not any(p.required for p in spec.params)]
    spatial = [layer for layer in plan.layers if layer != "input"] or list(plan.layers)
    picks = list(dict.fromkeys([spatial[0], spatial[len(spatial) // 2], spatial[-1]]))
    methods = [f"{e}+{a}" for e in extractors for a in aggregators if not is_slow(registry, f"{e}+{a}")]
    x = model_inputs(model, [sample.image], preprocess)
    maps = saliency(model, x, methods, picks, resize=True, registry=registry, mismatched="skip")
    image = sample.image
    cols = len(aggregators) * len(picks)
    fig, axes = plt.subplots(len(extractors), cols, figsize=(1.35 * cols + 0.6, 1.4 * len(extractors) + 0.8),
                             squeeze=False)
    small = torch.nn.functional.interpolate(image[None].float(), size=x.shape[-2:], mode="bilinear",
                                            align_corners=False)[0].mean(0)
    for r, e in enumerate(extractors):
        for li, layer in enumerate(picks):
            for ai, a in enumerate(aggregators):
                ax = axes[r, li * len(aggregators) + ai]
                ax.set_xticks([])
                ax.set_yticks([])
                key = (registry.canonical(f"{e}+{a}"), layer)
                if key in maps:
                    m = normalise(maps[key][0, 0].float()).cpu()
                    ax.imshow(small.cpu().numpy(), cmap="gray", alpha=0.35)
                    ax.imshow(m.numpy(), cmap="jet", alpha=0.65)
                else:
                    ax.text(0.5, 0.5, "slow:\nnot drawn", ha="center", va="center", fontsize=9,
                            transform=ax.transAxes)
                if r == 0:
                    ax.set_title(f"{a}\n@{_short(layer, 12)}", fontsize=9)
                if li == 0 and ai == 0:
                    ax.set_ylabel(e, fontsize=10)
    fig.suptitle(f"extractor (rows) x aggregator at {len(picks)} layer(s) (columns) on image {sample.image_id}; "
                 "each map min-max normalised", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def make_figures(run_dir, plan, rows, model, preprocess, samples, registry, config) -> list[Path]:
    """Write the figures; returns their paths (none, with a warning, without matplotlib)."""
    plt = _plt()
    if plt is None:
        import warnings

        warnings.warn("figures need matplotlib (`pip install extagg[figures]`); skipped", stacklevel=2)
        return []
    folder = Path(run_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    with plt.rc_context(FONT):
        if headline_tables(plan, rows):
            out.append(metric_vs_layer(plt, plan, rows, folder / "metric_vs_layer.png"))
            out.append(ranking(plt, plan, rows, folder / "ranking.png"))
            combined = combination(plt, plan, rows, folder / "combination.png")
            if combined is not None:
                out.append(combined)
        out.append(grid(plt, plan, model, preprocess, samples[0], registry, folder / "grid.png"))
    return out
