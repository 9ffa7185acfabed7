"""benchmarks/bench_cams.py times one ``extagg.saliency`` call per group of maps; these checks (ResNet18 at 32x32, a
few seconds, nothing timed) show that each such call returns exactly the maps the benchmark says it computes, and
that its limit really is the backward pass to the listed layers and the input."""
import importlib
import sys
from pathlib import Path

import pytest
import torch
import torchvision

import extagg

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """bench_cams imported from benchmarks/ (its ``common`` sets an environment default: kept out of the session)."""
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXTAGG_DISABLE_PLUGIN_AUTOLOAD", "1")
        mp.syspath_prepend(str(BENCHMARKS))
        yield importlib.import_module("bench_cams")
    for name in set(sys.modules) - before:
        if name in ("bench_cams", "bench_peers", "bench_rules", "common"):
            del sys.modules[name]


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def x():
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))


TARGETS = torch.tensor([3])


def test_each_timed_call_returns_every_claimed_map_equal_to_its_own_call(bench, net, x, registry):
    calls = bench.extagg_calls()
    assert set(calls["extagg (5 CAMs x 4 layers)"][0]) == {"gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"}
    assert {name.removeprefix("extagg ") for name in calls} >= {"guided", "deconvnet", "rectgrad", "lrp-epsilon",
                                                                 "lrp-zplus"}
    for name, (methods, layers) in calls.items():
        together = extagg.saliency(net, x, methods, layers, targets=TARGETS, registry=registry)
        assert len(together) == len(methods) * len(layers), name  # keys are the expanded compositions
        for method in methods if "CAMs" in name else methods[:1]:  # the rule's body: the next test
            alone = extagg.saliency(net, x, method, layers, targets=TARGETS, registry=registry)
            for layer in layers:
                torch.testing.assert_close(together[method, layer], alone[method, layer], msg=f"{name} {method}")
    # counter-case: a CAM of the joint call against another CAM called alone is refused
    cams, layers = calls["extagg (5 CAMs x 4 layers)"]
    together = extagg.saliency(net, x, cams, layers, targets=TARGETS, registry=registry)
    other = extagg.saliency(net, x, "gradcampp", layers, targets=TARGETS, registry=registry)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(together["gradcam", layers[-1]], other["gradcampp", layers[-1]])


def test_rule_calls_use_the_rule_at_every_layer(bench, net, x, registry):
    """The rule rows are not the plain call under another name: the guided maps differ from the plain ones."""
    calls = bench.extagg_calls()
    plain = extagg.saliency(net, x, "gradcam", calls["extagg guided"][1], targets=TARGETS, registry=registry)
    guided = extagg.saliency(net, x, "guided:gradcam", calls["extagg guided"][1], targets=TARGETS, registry=registry)
    assert all((plain["gradcam", layer] - guided["guided:gradcam", layer]).abs().max() > 1e-6
               for layer in ("input", "layer1", "layer2"))


def test_limit_is_the_backward_to_the_input_and_the_layers(bench, net, x, registry):
    grads = bench.limit_to(net, x, ["input", "layer1", "layer4"], TARGETS)
    assert [tuple(g.shape) for g in grads] == [(1, 64, 8, 8), (1, 512, 1, 1), (1, 3, 32, 32)]
    ref = extagg.saliency(net, x, "bias+sum", ["input", "layer4"], targets=TARGETS, registry=registry)
    torch.testing.assert_close(grads[-1].sum(1), ref["bias+sum", "input"][:, 0])
    torch.testing.assert_close(grads[1].sum(1), ref["bias+sum", "layer4"][:, 0])
    assert all(not p.requires_grad for p in net.parameters())
