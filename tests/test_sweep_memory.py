"""Peak memory of a sweep is flat in the number of images: a sweep holds one batch at a time.

Each measurement is a fresh subprocess sweeping N tiny images (no maps saved for the report, whose gallery grows
with the images by design; 80 px, so that one batch's maps and their
randomisation statistics are megabytes) and printing its own peak RSS (``VmHWM``). The counter-case makes the same
sweep keep every batch's randomisation references (what holding statistics across batches would cost) and shows
that the measurement sees it: the test can fail.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import sys, tempfile
sys.path[:0] = [{root!r}, {root!r} + "/tests", {root!r} + "/plugins"]
from sweep_fixtures import tiny_config, tiny_model, tiny_samples
import extagg.evaluation.similarity as similarity
n, leak = int(sys.argv[1]), sys.argv[2] == "leak"
if leak:  # keep every reference of every batch alive, as a regression would
    kept, original = [], similarity.similarity_reference
    def keeping(*a, **k):
        kept.append(original(*a, **k))
        return kept[-1]
    similarity.similarity_reference = keeping
    import extagg.plugin, extagg_builtins.metrics as m
    m.similarity_reference = keeping
from extagg.sweep import sweep
with tempfile.TemporaryDirectory() as run:
    config = tiny_config(run, methods=("gradcam", "normgrad", "linear-approx"), batch_size=4,
                         metrics=("randomisation(checkpoints=1)",), combine=(), save_maps="none")
    sweep(config, model=tiny_model(), samples=tiny_samples(n, size=80), out=open("/dev/null", "w"))
with open("/proc/self/status") as f:
    print("PEAK", next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")))
"""


def peak_kib(n: int, mode: str = "plain") -> int:
    proc = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT)), str(n), mode], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("PEAK")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    return int(line.split()[1])


@pytest.mark.slow
def test_peak_memory_is_flat_in_the_number_of_images():
    few, many = peak_kib(8), peak_kib(128)
    leaky = peak_kib(128, "leak")
    # 32 batches x 9 keys x 4 images x 80 x 80 px x 12 bytes of references is ~85 MiB if kept across batches
    assert leaky - few > 50 * 1024, (few, leaky)   # counter-case: the measurement sees a per-batch leak
    # 16x the images, (almost) the same peak: what grows is the caller's own 128 input images (9.4 MiB) and the
    # per-image result rows, not what a batch computes
    assert many - few < 25 * 1024, (few, many)
