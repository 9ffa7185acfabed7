"""scripts/metrics_table.py: docs/metrics.md's table is what the built-in registry and the family pages give (so
it cannot drift), every registered metric has a row, the agreement column is read from the family pages, and
a declared cost becomes its formula in n, K, B."""
import importlib.util
from pathlib import Path

import pytest

from extagg.errors import InputError
from extagg.metric_spec import Cost, Measure, Metric

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("metrics_table", ROOT / "scripts" / "metrics_table.py")
metrics_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(metrics_table)


def test_docs_metrics_md_is_up_to_date():
    """Fails when a metric is added, removed or changed (or a family page's agreement) without rerunning
    `python scripts/metrics_table.py`."""
    assert metrics_table.main(["--check"]) == 0


def test_every_registered_metric_has_a_row(registry):
    text = metrics_table.table(registry)
    for name in registry.metrics:
        assert f"| `{name}` |" in text


def test_agreement_is_read_from_family_pages(tmp_path, registry):
    (tmp_path / "faithfulness.md").write_text(
        "# Faithfulness\n\n| family | metric | measured agreement with Quantus |\n|---|---|---|\n"
        "| faithfulness | `deletion` | 3e-7 relative |\n\ntext\n\n| other | table |\n|---|---|\n| a | b |\n")
    rows = {line.split("|")[1].strip(): line for line in metrics_table.table(registry, tmp_path).splitlines()}
    assert rows["`deletion`"].rstrip(" |").endswith("3e-7 relative")
    assert rows["`insertion`"].rstrip(" |").endswith("not measured")  # counter-case: no row on any page


def test_cost_formula_from_the_declared_cost():
    def compute(ctx):
        return []

    def cost(n, keys, blocks, steps=4):
        return Cost(saliency_passes=blocks + 1, forward_images=n + steps * n * len(keys))

    metric = Metric(name="m", compute=compute, measures=[Measure(name="x", direction="higher")], cost=cost)
    assert metrics_table.cost_text(metric) == "passes 1 + B; forwards n + 4·n·K"

    def squared(n, keys, blocks):
        return Cost(forward_images=n * n)

    assert "describe" in metrics_table.cost_text(Metric(name="q", compute=compute, cost=squared,
                                                        measures=[Measure(name="x", direction="higher")]))


def test_a_page_without_markers_is_refused():
    with pytest.raises(InputError, match="metrics-table:start"):
        metrics_table.render("# Metrics\n", "| table |")
