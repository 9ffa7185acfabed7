"""Drawing maps: an overlay on a photo saved as a PNG (no matplotlib needed), and the ``extagg explain`` grid
(:func:`explain_grid`, matplotlib)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from .maps import normalise, resize_maps


def jet(v: torch.Tensor) -> torch.Tensor:
    """The jet colour map: (H, W) in [0, 1] -> (3, H, W) RGB in [0, 1]."""
    four = 4 * v
    r = (torch.minimum(four - 1.5, -four + 4.5)).clamp(0, 1)
    g = (torch.minimum(four - 0.5, -four + 3.5)).clamp(0, 1)
    b = (torch.minimum(four + 0.5, -four + 2.5)).clamp(0, 1)
    return torch.stack([r, g, b])


def overlay(image: torch.Tensor, saliency: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Blend ``jet(normalise(saliency))`` (any h, w; resized bilinearly) over ``image`` (3, H, W) in [0, 1]."""
    m = saliency.detach().float().reshape(1, 1, *saliency.shape[-2:])
    m = resize_maps(m, image.shape[-2:])[0, 0]
    return ((1 - alpha) * image.float().cpu() + alpha * jet(normalise(m).cpu())).clamp(0, 1)


def save_png(rgb: torch.Tensor, path: Union[str, Path]) -> Path:
    """Save a (3, H, W) [0, 1] tensor as a PNG."""
    from PIL import Image

    arr = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")
    return path


def clip_scale(m: torch.Tensor, percentile: float = 99.0) -> torch.Tensor:
    """``m`` clipped to its [100 - percentile, percentile] percentiles, then min-max scaled to [0, 1] (NaN stays
    NaN; a constant map becomes zeros). One very bright pixel no longer turns the rest of a map dark."""
    m = m.detach().float().cpu()
    finite = m[torch.isfinite(m)]
    if finite.numel() == 0:
        return m
    if percentile < 100:
        q = torch.tensor([1 - percentile / 100, percentile / 100])
        lo, hi = torch.quantile(finite.double(), q.double()).float()
        m = m.clamp(lo, hi)
    return normalise(torch.nan_to_num(m, nan=float(finite.min())).reshape(1, *m.shape[-2:]))[0].masked_fill(
        ~torch.isfinite(m), float("nan"))


def explain_grid(photos, rows, methods, layers, canonical, path, *, clip: float = 99.0, alpha: float = 0.6,
                 model_name: str = ""):
    """One figure (matplotlib): per image a block of rows (``methods``) x columns (``layers``) of maps drawn over
    the photo, titled with the explained class; one colour bar for the scale every map is drawn at.

    :param rows: per image ``(name, class index, class label, probability, {(method, layer): (H, W) map or None})``.
    :param canonical: ``{method as asked: canonical string}`` (shown under a name that differs).
    """
    try:
        import matplotlib
    except ImportError:
        from .errors import InputError

        raise InputError("the explain figure needs matplotlib (`pip install extagg[figures]`)") from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n_m, n_l = len(methods), len(layers)
    cell = 2.4  # inches per map column; a row is as high as the photo's aspect makes it
    heights = [n_m * cell * photo.shape[-2] / photo.shape[-1] + 0.5 for photo in photos]
    fig = plt.figure(figsize=(1.4 + cell * n_l + 1.0, sum(heights) + 0.2), layout="constrained")
    subfigs = fig.subfigures(len(rows), 1, squeeze=False, height_ratios=heights)[:, 0]
    mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap="jet")
    what = f"clipped at the {clip:g}th percentile" if clip < 100 else "not clipped"
    for sub, photo, (name, cls, label, prob, cells) in zip(subfigs, photos, rows):
        sub.suptitle(f"{name}: explaining class {cls} ({label}, p = {prob:.2f})" + (f" — {model_name}" if model_name
                                                                                   else ""), fontsize=11)
        axes = sub.subplots(n_m, n_l, squeeze=False)
        h, w = photo.shape[-2:]
        for i, method in enumerate(methods):
            for j, layer in enumerate(layers):
                ax = axes[i, j]
                ax.set_xticks([])
                ax.set_yticks([])
                ax.imshow(photo.permute(1, 2, 0).clamp(0, 1).numpy())
                m = cells.get((method, layer))
                if m is None:
                    ax.text(0.5, 0.5, "does not fit\nthis layer", ha="center", va="center", fontsize=9,
                            transform=ax.transAxes, color="white", bbox={"facecolor": "black", "alpha": 0.6})
                else:
                    scaled = clip_scale(resize_maps(m.detach().float().cpu()[None, None], (h, w))[0, 0], clip)
                    ax.imshow(scaled.numpy(), cmap="jet", vmin=0, vmax=1, alpha=alpha)
                if i == 0:
                    ax.set_title(layer, fontsize=10)
                if j == 0:
                    under = canonical.get(method, method)
                    ax.set_ylabel(method + (f"\n{under}" if under != method else ""), fontsize=10)
        bar = sub.colorbar(mappable, ax=axes, shrink=min(0.95, 0.6 + 0.2 * n_m), pad=0.02, aspect=25)
        bar.set_label(f"saliency per map, min-max scaled\n({what})", fontsize=9)
        bar.ax.tick_params(labelsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
