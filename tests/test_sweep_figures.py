"""The sweep's figures say what they show: the measure and its direction on the value axis, n and the subset in
each title, error bars, methods as asked with their canonical string, layer combinations on metric_vs_layer, and
no text under 9 pt."""
from __future__ import annotations

import io

import pytest

from extagg.sweep import sweep
from sweep_fixtures import tiny_config, tiny_model, tiny_samples


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """{file name: matplotlib Figure} of a tiny sweep with two metrics and one layer combination."""
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    d = tmp_path_factory.mktemp("figs")
    figures = {}
    save = Figure.savefig

    def keep(self, path, *a, **k):
        figures[str(path).rsplit("/", 1)[-1]] = self
        return save(self, path, *a, **k)

    Figure.savefig = keep
    try:
        sweep(tiny_config(d, figures=True, methods=("gradcam", "normgrad"), metrics=("sensitivity", "deletion"),
                          combine=("sum:linear",)), model=tiny_model(), samples=tiny_samples(4), out=io.StringIO())
    finally:
        Figure.savefig = save
    assert matplotlib is not None
    return figures


def texts(fig):
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]


@pytest.mark.parametrize("name", ["metric_vs_layer.png", "ranking.png", "combination.png", "grid.png"])
def test_text_is_legible(drawn, name):
    """Before, ticks and titles were 6-8 pt at 60-80 dpi."""
    small = [(t.get_text(), t.get_fontsize()) for t in texts(drawn[name]) if t.get_fontsize() < 9]
    assert not small


@pytest.mark.parametrize("name", ["metric_vs_layer.png", "ranking.png", "combination.png"])
def test_panels_name_measure_direction_n_and_show_error_bars(drawn, name):
    from matplotlib.collections import LineCollection

    fig = drawn[name]
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) >= 2
    for ax in panels:
        value_axis = ax.get_xlabel() if name == "ranking.png" else ax.get_ylabel()
        assert "is better" in value_axis and ("spearman" in value_axis or "deletion_auc" in value_axis)
        assert "n = 4 images" in ax.get_title() or "n = 3-4 images" in ax.get_title()
        assert any(isinstance(c, LineCollection) for c in ax.collections)  # the error bars
    words = " ".join(t.get_text() for t in texts(fig))
    assert "gradcam = pooled-scaling+sum+relu" in words and "normgrad = conv1x1+norm" in words


def test_metric_vs_layer_includes_the_layer_combination(drawn):
    ax = next(ax for ax in drawn["metric_vs_layer.png"].axes if ax.get_title())
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[-1] == "combine sum:linear" and "input" in ticks
