"""Threads: concurrent saliency calls on one model take turns while the model is changed and restored, give the
same maps as one thread, and leave the model exactly as it was; the native switch is per thread."""
import threading

import torch

import extagg
from extagg import concurrency, native

from model_state import assert_unchanged, snapshot
from test_model_untouched import user_model

METHODS = ["linear-approx", "meta(lr=0.1):normgrad"]


def test_four_threads_on_one_model():
    net = user_model()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    before = snapshot(net)
    want = extagg.saliency(net, x, METHODS, ["1", "3"], targets=1)
    errors, results = [], []

    def work():
        try:
            for _ in range(3):
                results.append(extagg.saliency(net, x, METHODS, ["1", "3"], targets=1))
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 12
    for got in results:
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
    assert_unchanged(before, net)


def test_the_lock_is_per_model_and_reentrant():
    a, b = user_model(), user_model()
    assert concurrency.model_lock(a) is concurrency.model_lock(a)
    assert concurrency.model_lock(a) is not concurrency.model_lock(b)
    with concurrency.exclusive(a):
        with concurrency.exclusive(a):     # the same thread may nest
            got = []
            t = threading.Thread(target=lambda: got.append(concurrency.model_lock(a).acquire(timeout=0.05)))
            t.start()
            t.join()
            assert got == [False]          # another thread waits
            t = threading.Thread(target=lambda: got.append(concurrency.model_lock(b).acquire(timeout=0.05)))
            t.start()
            t.join()
            assert got == [False, True]    # ... but not for another model


def test_native_switch_does_not_leak_between_threads():
    seen = {}
    inside = threading.Event()
    release = threading.Event()

    def off():
        with native.enabled(False):
            inside.set()
            release.wait(5)
            seen["off"] = native._on()

    t = threading.Thread(target=off)
    t.start()
    inside.wait(5)
    seen["main"] = native._on()
    release.set()
    t.join()
    assert seen == {"off": False, "main": native._state["on"]}
