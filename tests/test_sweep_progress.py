"""The sweep's progress bar moves inside long metrics, and Ctrl-C leaves with one line and exit status 130."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

from extagg.sweep import sweep
from extagg.sweep.progress_bar import SweepProgress
from sweep_fixtures import tiny_config, tiny_model, tiny_samples, unit_lines


def test_the_bar_moves_during_randomisation_and_curves(tmp_path, monkeypatch):
    """Before, the bar advanced only when a metric call finished a whole batch: during randomisation (one saliency
    pass per checkpoint) it stood still, and its ETA with it. Now each pass and each curve batch moves it, never
    past the call's units before the call ends, and it ends exactly on the total."""
    seen = []
    tick = SweepProgress.tick

    def spy(self, kind, amount):
        tick(self, kind, amount)
        seen.append((kind, self.bar.n))

    monkeypatch.setattr(SweepProgress, "tick", spy)
    closed = []
    close = SweepProgress.close
    monkeypatch.setattr(SweepProgress, "close", lambda self, interrupted=False: (closed.append(self.bar.n),
                                                                                  close(self, interrupted)))
    cfg = tiny_config(tmp_path, progress=True, metrics=("randomisation", "deletion"), batch_size=5, curve_batch=8)
    sweep(cfg, model=tiny_model(), samples=tiny_samples(5), out=io.StringIO())
    per_metric = closed[0] // 2  # two metrics with the same (method, layer, image) units
    assert closed[0] == 2 * per_metric and per_metric % 5 == 0
    randomisation = [n for kind, n in seen if kind == "saliency"]
    curves = [n for kind, n in seen if kind == "curve"]
    assert len(set(randomisation)) >= 3 and 0 < randomisation[0] < per_metric and max(randomisation) < per_metric
    assert len(set(curves)) >= 3 and per_metric < curves[0] and max(curves) < 2 * per_metric


CHILD = r"""
import os, sys, time
import extagg.sweep.runner as runner
from extagg.cli import main
from extagg.sweep.store import RunStore
from sweep_fixtures import tiny_config, tiny_model, tiny_samples

run_dir, ready = sys.argv[1], sys.argv[2]
real_sweep, commit = runner.sweep, RunStore.commit

def tiny(config):  # what `extagg sweep -o RUN_DIR` runs, on the tiny model and 40 images
    return real_sweep(tiny_config(run_dir, progress=config.progress, metrics=("sensitivity", "deletion")),
                      model=tiny_model(), samples=tiny_samples(40))

def slow_commit(self):
    commit(self)
    open(ready, "a").close()  # a batch's units are on disk: the parent may interrupt now
    time.sleep(0.3)

runner.sweep, RunStore.commit = tiny, slow_commit
sys.exit(main(["sweep", "-o", run_dir]))
"""


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    """SIGINT mid-sweep: no traceback, one line on stderr that says how many units are saved and how to resume
    (the progress bar is wiped, not left half-drawn), exit status 130; the saved units are on disk."""
    ready, run_dir = tmp_path / "ready", tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), str(ready)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # bytes: keep the bar's \r
    try:
        deadline = time.monotonic() + 300
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.communicate()[1].decode()
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=120)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    lines = [line.rsplit("\r", 1)[-1] for line in err.strip().split("\n")]  # what a terminal shows
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert line.startswith("extagg: interrupted: ") and "rerun the same command to resume" in line
    saved = int(line.split("interrupted: ")[1].split()[0])
    total = int(line.split(" of ")[1].split()[0])
    on_disk = len(unit_lines(run_dir))
    assert 0 < saved == on_disk < total and total % 40 == 0
