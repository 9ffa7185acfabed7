"""``extagg report`` in a real headless Chromium: a small real sweep (EfficientNet-Lite0 on two scikit-image
photos), its report.html opened from file:// with no network. Checks: no console error, no failed request, a click
on a header sorts the rows (in both directions, NaN last), a filter hides rows, the metric-vs-layer chart holds
the layer combination and its legend hides a method, every gallery image decodes and the gallery has exactly one
thumbnail per computed (image, method, layer). Takes the README's screenshot (docs/figures/report.png with
EXTAGG_WRITE_SCREENSHOT=1).

Needs Debian's ``chromium`` (scripts/setup.sh installs it) and the ``playwright`` package (the ``test`` extra;
its own browser downloads are never used). Skips, saying why, only where there is no Chromium and ``CI`` is unset;
in CI a missing Chromium fails.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path

import pytest

from extagg.sweep import SweepConfig, sweep
from sweep_fixtures import unit_lines

CHROMIUM = os.environ.get("EXTAGG_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "figures" / "report.png"


def _chromium() -> str:
    if shutil.which(CHROMIUM) or os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"no Chromium at {CHROMIUM}: scripts/setup.sh installs Debian's chromium "
                    "(apt-get install chromium)")
    pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's chromium, or set EXTAGG_CHROMIUM to a Chromium binary)")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    pytest.importorskip("efficientnet_lite_pytorch", reason="the embedded default model (extagg[default-model])")
    d = tmp_path_factory.mktemp("browser") / "run"
    cfg = SweepConfig(limit=2, methods=("gradcam", "normgrad"), layers=("_blocks.10", "_blocks.15", "_conv_head"),
                      metrics=("sensitivity", "deletion(steps=2)"), batch_size=2, run_dir=str(d), progress=False,
                      figures=False)
    sweep(cfg, out=io.StringIO())
    units = [json.loads(x) for x in unit_lines(d)]
    return d, {(u["image"], u["method"], u["layer"]) for u in units}


@pytest.fixture(scope="module")
def page(report, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    path = _chromium()
    profile = tmp_path_factory.mktemp("chromium-profile")
    problems: list = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile), executable_path=path, args=ARGS, headless=True,
                                                       viewport={"width": 1100, "height": 900})
        try:
            tab = context.new_page()
            tab.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            tab.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            tab.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
            tab.goto((report[0] / "report.html").as_uri(), wait_until="load")
            yield tab, problems
        finally:
            context.close()


def _values(tab) -> list[float]:
    texts = tab.eval_on_selector_all(
        "#results-table tbody tr", "rows => rows.filter(r => r.style.display !== 'none')"
        ".map(r => r.querySelector('td[data-key=value]').textContent)")
    return [math.nan if t == "NaN" else float(t) for t in texts]


def _sorted(values, sign):
    finite = [v for v in values if not math.isnan(v)]
    tail = values[len(finite):]
    return finite == sorted(finite, reverse=sign < 0) and all(math.isnan(v) for v in tail)


def test_the_page_loads_offline_without_errors(page, report):
    tab, problems = page
    assert tab.title() == "extagg sweep report"
    assert tab.locator("#results-table tbody tr").count() > 0
    assert problems == []
    html = (report[0] / "report.html").read_text()
    assert "<script src" not in html and "<link rel=\"stylesheet\"" not in html


def test_a_click_on_a_header_sorts_the_rows(page):
    tab, problems = page
    before = _values(tab)
    assert not _sorted(before, 1)  # the written order is the plan's, so sorting has something to do
    tab.click("#results-table th[data-key=value]")
    up = _values(tab)
    assert _sorted(up, 1) and sorted(map(repr, up)) == sorted(map(repr, before))
    tab.click("#results-table th[data-key=value]")
    down = _values(tab)
    assert _sorted(down, -1) and down != up
    assert problems == []


def test_a_filter_hides_rows(page):
    tab, problems = page
    total = tab.locator("#results-table tbody tr").count()
    tab.select_option("#filter-method", "normgrad")
    shown = tab.locator("#results-table tbody tr:visible")
    methods = set(shown.evaluate_all("rows => rows.map(r => r.dataset.method)"))
    expected = sum(1 for r in json.loads(tab.inner_text("#report-data"))["rows"] if r["method"] == "normgrad")
    assert methods == {"normgrad"} and shown.count() == expected and 0 < expected < total
    assert tab.inner_text("#count") == f"{expected} of {total} rows shown"
    tab.select_option("#filter-method", "")
    assert tab.locator("#results-table tbody tr:visible").count() == total


def test_the_charts_hold_the_combination_and_the_legend_toggles(page):
    tab, problems = page
    combo = tab.locator("#svg-layers circle[data-layer='combine:sum:linear']")
    assert combo.count() == 2  # one point per method at the layer combination
    assert tab.locator("#svg-layers circle[data-method=gradcam]").count() == 4
    tab.click("#legend span[data-method=gradcam]")
    assert tab.locator("#svg-layers circle[data-method=gradcam]").count() == 0
    assert tab.locator("#svg-ranking circle[data-method=gradcam]").count() == 0
    tab.click("#legend span[data-method=gradcam]")
    assert tab.locator("#svg-ranking circle[data-method=gradcam]").count() == 1
    tab.hover("#svg-layers circle[data-method=normgrad]")
    assert "normgrad" in tab.inner_text("#tip")
    assert problems == []


def test_every_gallery_image_decodes_one_per_computed_map(page, report):
    tab, problems = page
    widths = tab.eval_on_selector_all("#gallery ~ section img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert widths and all(w and w > 0 for w in widths)
    shown = tab.eval_on_selector_all("img.thumb", "imgs => imgs.map(i => [i.dataset.image, i.dataset.method, "
                                                  "i.dataset.layer])")
    assert len(shown) == len(report[1]) and {tuple(x) for x in shown} == report[1]
    assert tab.locator("img.photo").count() == 2
    assert "Egyptian cat" in tab.inner_text("section.image[data-image=chelsea] h3")
    assert problems == []


def test_screenshot_for_the_readme(page, tmp_path):
    """Takes the README's screenshot (the table, the charts and the first image's maps, downscaled) into the test's
    folder; with ``EXTAGG_WRITE_SCREENSHOT=1`` into docs/figures/report.png, so that running the suite never
    rewrites a committed file."""
    import os

    from PIL import Image

    tab, problems = page
    tab.evaluate("window.scrollTo(0, 0)")
    bottom = tab.evaluate("document.querySelector('section.image').getBoundingClientRect().bottom + window.scrollY")
    shot = tab.screenshot(full_page=True, clip={"x": 0, "y": 0, "width": 1100, "height": bottom + 8})
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    image = image.resize((800, round(image.height * 800 / image.width)), Image.LANCZOS)
    target = SCREENSHOT if os.environ.get("EXTAGG_WRITE_SCREENSHOT") == "1" else tmp_path / "report.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(target, optimize=True)
    assert Image.open(target).size[0] == 800 and problems == []
