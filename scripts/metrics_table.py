"""Write the metrics table of docs/metrics.md from the registry, so that it cannot drift from the code.

    python scripts/metrics_table.py           # rewrite the table between the markers in docs/metrics.md
    python scripts/metrics_table.py --check   # exit 1 if docs/metrics.md is not what the registry gives

Every column but the last comes from the registered :class:`extagg.plugin.Metric` records of the built-in
plugins (third-party plugins are left out): the name, the family (from the plugin's entry-point name,
``builtin-metrics-<family>``; the original built-ins by :data:`BUILTIN_FAMILY`), the reference, ``needs``, the
measures with their direction and range, and the declared cost per batch as a formula in ``n`` (images), ``K``
((method, layer) maps) and ``B`` (randomised blocks), read off ``Metric.cost``. The last column, the measured
agreement with Quantus, is a measurement, not a property of the code: it is read from the family pages
docs/metrics/<family>.md, from any Markdown table with a ``metric`` column and a column whose header mentions
"agreement" (a metric that no family page lists shows "not measured").
"""
from __future__ import annotations

import argparse
import itertools
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "metrics.md"
FAMILIES = ROOT / "docs" / "metrics"
START, END = "<!-- metrics-table:start -->", "<!-- metrics-table:end -->"
BUILTIN_FAMILY = {"deletion": "faithfulness", "insertion": "faithfulness", "pointing": "localisation",
                  "randomisation": "randomisation", "sensitivity": "randomisation", "identity": "identity"}
"""The family of each metric of the original ``builtin-metrics`` plugin (Quantus's families where one fits)."""


def builtin_registry():
    import extagg

    return extagg.Registry.from_plugin_manager(extagg.make_plugin_manager(autoload=False))


def family(name: str, metric) -> str:
    plugin = metric.origin.plugin if metric.origin is not None else ""
    if plugin.startswith("builtin-metrics-"):
        return plugin.removeprefix("builtin-metrics-")
    if plugin == "builtin-metrics":
        return BUILTIN_FAMILY.get(name, "other")
    return plugin or "other"


def _term(coef: float, symbols: tuple[str, ...]) -> str:
    c = int(coef) if float(coef).is_integer() else round(coef, 3)
    if not symbols:
        return str(c)
    return ("" if c == 1 else f"{c}·") + "·".join(symbols)


_SUBSETS = [c for r in range(4) for c in itertools.combinations(range(3), r)]
_POINTS = [(n, k, b) for n in (1, 2) for k in (1, 2) for b in (0, 1)]


def _monomials(point) -> list[float]:
    return [float(math.prod(point[i] for i in subset)) for subset in _SUBSETS]


def _fit(values: dict) -> list[float]:
    """Coefficients of the multilinear polynomial in n, K, B through ``values`` at n, K in {1, 2}, B in {0, 1}."""
    import numpy as np

    a = np.array([_monomials(p) for p in _POINTS])
    return [float(round(c, 9)) for c in np.linalg.solve(a, np.array([values[p] for p in _POINTS]))]


def _formula(coefs: list[float]) -> str:
    names = ("n", "K", "B")
    terms = [_term(c, tuple(names[i] for i in subset)) for c, subset in zip(coefs, _SUBSETS) if c]
    return " + ".join(terms) or "0"


def cost_text(metric) -> str:
    """The declared cost per batch: ``passes P; forwards F`` (saliency passes of all methods; images through the
    model), as formulas in n, K, B; "—" where the metric declares none."""
    if metric.cost is None:
        return "—"
    kwargs = {p.name: p.default for p in metric.params if not p.required}

    def at(n, k, b):
        return metric.cost(n, [(f"m{i}", "layer") for i in range(k)], b, **kwargs)

    parts = []
    for field, label in (("saliency_passes", "passes"), ("forward_images", "forwards")):
        coefs = _fit({p: float(getattr(at(*p), field)) for p in _POINTS})
        text = _formula(coefs)
        check = ((3, 3, 2), (5, 2, 3))
        if any(abs(sum(c * m for c, m in zip(coefs, _monomials(p))) - float(getattr(at(*p), field))) > 1e-6
               for p in check):
            text = "see `extagg describe`"  # not multilinear in n, K, B
        if text != "0":
            parts.append(f"{label} {text}")
    return "; ".join(parts) or "0"


def agreements(folder: Path = FAMILIES) -> dict[str, str]:
    """{metric name: agreement text} from the Markdown tables of the family pages."""
    out: dict[str, str] = {}
    for page in sorted(folder.glob("*.md")) if folder.is_dir() else []:
        header = None
        for line in page.read_text(encoding="utf-8").splitlines():
            if not line.lstrip().startswith("|"):
                header = None
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = [c.lower() for c in cells]
                continue
            if all(re.fullmatch(r":?-{2,}:?", c) for c in cells if c):
                continue
            metric = next((i for i, h in enumerate(header) if h.strip("` ") == "metric"), None)
            agree = next((i for i, h in enumerate(header) if "agreement" in h), None)
            if metric is None or agree is None or max(metric, agree) >= len(cells):
                continue
            name = re.sub(r"[`*]", "", cells[metric]).split("(")[0].strip()
            if name:
                out[name] = cells[agree]
    return out


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def table(registry=None, folder: Path = FAMILIES) -> str:
    """The Markdown table of every registered metric, by family then name."""
    registry = registry if registry is not None else builtin_registry()
    agreed = agreements(folder)
    rows = sorted(registry.metrics.items(), key=lambda item: (family(*item), item[0]))
    lines = ["| metric | family | paper | needs | measures (better; range) | cost per batch | agreement with Quantus |",
             "|---|---|---|---|---|---|---|"]
    for name, m in rows:
        measures = ", ".join(f"{x.name} ({x.direction.arrow}; [{x.low:g}, {x.high:g}])" for x in m.measures)
        needs = ", ".join(sorted(m.needs)) or "—"
        lines.append("| " + " | ".join(_cell(c) for c in (f"`{name}`", family(name, m), m.reference or "—", needs,
                                                           measures, cost_text(m),
                                                           agreed.get(name, "not measured"))) + " |")
    return "\n".join(lines)


def render(doc_text: str, body: str) -> str:
    """``doc_text`` with the table between the markers replaced by ``body``."""
    if doc_text.count(START) != 1 or doc_text.count(END) != 1 or doc_text.index(START) > doc_text.index(END):
        from extagg.errors import InputError

        raise InputError(f"the metrics page needs one {START} line followed by one {END} line")
    head, rest = doc_text.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{body}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/metrics.md is out of date")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    current = args.doc.read_text(encoding="utf-8")
    wanted = render(current, table(folder=args.doc.parent / "metrics"))
    if args.check:
        if wanted != current:
            print(f"{args.doc} is out of date: run python scripts/metrics_table.py", file=sys.stderr)
            return 1
        return 0
    args.doc.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
