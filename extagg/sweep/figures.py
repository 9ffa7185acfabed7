"""Figures of a finished sweep (matplotlib, ``pip install extagg[figures]``), written under ``RUN_DIR/figures``.

* ``metric_vs_layer.png``: each metric's headline number against the layer and the layer combinations, one line
  per method (the paper's Fig. 3 layout), with the metric's floors as dashed lines.
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


def _short(layer: str, width: int = 12) -> str:
    layer = layer.replace("combine:", "")
    return layer if len(layer) <= width else "…" + layer[-(width - 1):]


def _title(h) -> str:
    return f"{h.metric}: {h.measure} [{h.subset}] ({h.direction.arrow} better)"


def _name(plan, method: str) -> str:
    return plan.layout.asked.get(method, method)


def metric_vs_layer(plt, plan, rows, path: Path) -> Path:
    """Each metric's headline number against the layer (combinations last), one line per method; its floors as
    dashed lines of the same colour."""
    heads = headline_tables(plan, rows)
    cols = min(3, len(heads))
    nrows = math.ceil(len(heads) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False)
    layers = [*plan.layers, *plan.combinations, *plan.layout.external_layers()]
    styles = {"floor:cross-image": "--", "floor:smooth-noise": ":", "floor:centre": "-."}
    for ax, h in zip(axes.flat, heads):
        for method in plan.methods:
            xs = [i for i, layer in enumerate(layers) if (method, layer) in h.table]
            if not xs:
                continue
            line, = ax.plot(xs, [h.table[method, layers[i]].value for i in xs], marker="o", ms=3, lw=1.2,
                            label=_name(plan, method))
            for floor, table in h.floors.items():
                fx = [i for i in xs if (method, layers[i]) in table]
                ax.plot(fx, [table[method, layers[i]].value for i in fx], ls=styles.get(floor, "--"), lw=0.9,
                        color=line.get_color(), alpha=0.7)
        ax.set_xticks(range(len(layers)), [_short(layer) for layer in layers], rotation=45, ha="right", fontsize=7)
        ax.set_title(_title(h), fontsize=8)
        ax.set_ylabel(h.measure, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3)
        if h.floors:
            ax.text(0.01, 0.01, "floors: " + ", ".join(f"{styles.get(f, '--')} {f[6:]}" for f in h.floors),
                    transform=ax.transAxes, fontsize=6, va="bottom")
    for ax in list(axes.flat)[len(heads):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08 + 0.02 * math.ceil(len(labels) / 4), 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _best(h, method: str, layers=None):
    """(value, layer) of the method's best layer by the measure's direction, or None."""
    cells = [(r.value, layer) for (m, layer), r in h.table.items() if m == method and (layers is None or layer in layers)
             and math.isfinite(r.value)]
    return min(cells, key=lambda c: h.direction.key(c[0])) if cells else None


def ranking(plt, plan, rows, path: Path) -> Path:
    """Methods ranked by their best layer, per metric, in the measure's direction (best on top)."""
    heads = headline_tables(plan, rows)
    fig, axes = plt.subplots(1, len(heads), figsize=(4.0 * len(heads), 0.4 * len(plan.methods) + 1.6),
                             squeeze=False)
    for ax, h in zip(axes.flat, heads):
        best = {m: b for m in plan.methods for b in [_best(h, m)] if b is not None}
        order = sorted(best, key=lambda m: h.direction.key(best[m][0]))
        ax.barh(range(len(order)), [best[m][0] for m in order], color="tab:blue")
        for floor, table in h.floors.items():
            ax.scatter([table[m, best[m][1]].value if (m, best[m][1]) in table else math.nan for m in order],
                       range(len(order)), marker="|", s=120, label=floor[6:], zorder=3)
        ax.set_yticks(range(len(order)), [f"{_name(plan, m)} @{_short(best[m][1], 10)}" for m in order], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(_title(h), fontsize=8)
        ax.set_xlabel(h.measure, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        if h.floors:
            ax.legend(fontsize=6, title="floors", title_fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def combination(plt, plan, rows, path: Path):
    """Each method's best single layer against each layer combination, per metric."""
    heads = [h for h in headline_tables(plan, rows) if not plan.layout.companions.get(h.metric)]
    if not plan.combined or not heads:
        return None
    methods = [m for m in plan.methods if m in plan.combined]
    fig, axes = plt.subplots(1, len(heads), figsize=(max(4.0, 0.9 * len(methods) + 1.5) * len(heads) * 0.6, 3.8),
                             squeeze=False)
    width = 0.8 / (1 + len(plan.combinations))
    for ax, h in zip(axes.flat, heads):
        singles = [b[0] if (b := _best(h, m, plan.combined[m])) else math.nan for m in methods]
        ax.bar([i - 0.4 + width / 2 for i in range(len(methods))], singles, width, label="best single layer",
               color="grey")
        for j, label in enumerate(plan.combinations, 1):
            ax.bar([i - 0.4 + width * (j + 0.5) for i in range(len(methods))],
                   [h.table[m, label].value if (m, label) in h.table else math.nan for m in methods], width,
                   label=label.replace("combine:", ""))
        ax.set_xticks(range(len(methods)), [_short(_name(plan, m), 16) for m in methods], rotation=45, ha="right",
                      fontsize=7)
        ax.set_title(_title(h), fontsize=8)
        ax.set_ylabel(h.measure, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
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
    fig, axes = plt.subplots(len(extractors), cols, figsize=(1.05 * cols, 1.1 * len(extractors) + 0.4), squeeze=False)
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
                    ax.text(0.5, 0.5, "slow", ha="center", va="center", fontsize=6, transform=ax.transAxes)
                if r == 0:
                    ax.set_title(f"{a}\n@{_short(layer, 10)}", fontsize=6)
                if li == 0 and ai == 0:
                    ax.set_ylabel(e, fontsize=7)
    fig.suptitle(f"extractor x aggregator on {sample.image_id} (normalised maps)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
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
    if headline_tables(plan, rows):
        out.append(metric_vs_layer(plt, plan, rows, folder / "metric_vs_layer.png"))
        out.append(ranking(plt, plan, rows, folder / "ranking.png"))
        combined = combination(plt, plan, rows, folder / "combination.png")
        if combined is not None:
            out.append(combined)
    out.append(grid(plt, plan, model, preprocess, samples[0], registry, folder / "grid.png"))
    return out
