"""The conformance matrix (scripts/conformance.py, committed as docs/models.md), a fixed sample of its cells on every
run: a cell that works in the committed matrix must still work (maps on the layer's grid, finite, the model left
as it was, an all-zero map only with a ZeroGradientWarning), and no cell may turn into a raw error or a wrong map.
The whole matrix (every torchvision classifier, the timm families) is the script's: ``python
scripts/conformance.py``."""
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = [  # (model, layer group, methods): cheap rows covering each layout and each method family
    ("resnet18", "stages", ("gradcam", "normgrad", "linear-approx", "guided-backprop", "fullgrad")),
    ("mobilenet_v3_small", "blocks", ("smooth(n=4):gradcam", "guided-backprop")),
    ("swin_t", "stages", ("gradcam", "linear-approx", "guided-backprop")),
    ("timm:convnext_atto", "blocks", ("normgrad", "gradcam")),
    ("timm:mobilevit_xxs", "stages", ("gradcam",)),
]


@pytest.fixture(scope="module")
def conformance():
    spec = importlib.util.spec_from_file_location("conformance", ROOT / "scripts" / "conformance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_committed_matrix_covers_every_torchvision_classifier(conformance):
    committed = conformance.read_committed()
    assert set(conformance.torchvision_names()) <= set(committed)
    assert {f"timm:{n}" for n in conformance.TIMM} <= set(committed)
    statuses = {s for row in committed.values() for s in row.values()}
    assert statuses <= {"works", "zero", "clipped", "refused"}, statuses  # no FAIL is committed


@pytest.mark.parametrize("name, group, methods", SAMPLE, ids=[f"{n}-{g}" for n, g, _ in SAMPLE])
def test_sampled_cells_keep_their_committed_status(conformance, name, group, methods):
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    committed = conformance.read_committed()[name]
    row = conformance.row(name, methods=methods, groups=(group,))
    for method in methods:
        status, detail = row[group, method]
        assert status != "FAIL", f"{name} {group} {method}: {detail}"
        if committed[group, method] in ("works", "zero"):
            assert status == committed[group, method], f"{name} {group} {method}: {status} ({detail})"


def test_the_cell_check_catches_a_wrong_grid_and_a_silent_zero(conformance):
    """The check itself can fail: a map on a channels-last layer read channels-first (the (w, C) grid of a
    (N, h, w, C) output), and an all-zero map without a warning, are failures."""
    shapes = {"a": (1, 7, 7, 96)}
    bad = {("gradcam", "a"): torch.ones(1, 1, 7, 96)}
    assert conformance._check(bad, shapes, [])[0] == "FAIL"
    assert conformance._check({("gradcam", "a"): torch.zeros(1, 1, 7, 7)}, shapes, [])[0] == "FAIL"
    assert conformance._check({("gradcam", "a"): torch.ones(1, 1, 7, 7)}, shapes, []) == ("works", "")
