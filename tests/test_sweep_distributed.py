"""Two processes with gloo on the CPU give exactly the single-process numbers, also when resuming."""
from __future__ import annotations

import io
import json
import os
import socket
import sys
from typing import Optional

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from extagg.sweep import sweep
from sweep_fixtures import tiny_config, tiny_model, tiny_samples, unit_lines

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
METRICS = ("sensitivity", "randomisation", "deletion")
TABLES = ("results.csv", "per_image.csv")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leave() -> None:
    """End a rank whose sweep returned as ``python -m extagg`` does under torchrun: without the interpreter's
    teardown, where gloo's threads can abort a process whose work is done (the outputs are checked instead)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _worker(rank: int, world: int, port: int, run_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    sweep(tiny_config(run_dir, metrics=METRICS, device="cpu"), model=tiny_model(), samples=tiny_samples(),
          out=io.StringIO())
    _leave()


def _worker_three(rank: int, world: int, port: int, run_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    sweep(tiny_config(run_dir, **THREE), model=coupled_model(), samples=tiny_samples(3),
          out=io.StringIO())
    _leave()


def _spawn(run_dir, worker=_worker) -> None:
    """Rendezvous through env:// as torchrun sets it up; the free port can be taken by another process before
    rank 0 binds it, so a rendezvous that finds it in use is retried on a new port (nothing is written before)."""
    for attempt in range(3):
        try:
            mp.spawn(worker, args=(2, _free_port(), str(run_dir)), nprocs=2, join=True)
            return
        except mp.ProcessRaisedException as exc:
            if attempt == 2 or "address already in use" not in str(exc).lower():
                raise


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    d = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker: the same kernels, the same rounding
    try:
        sweep(tiny_config(d, metrics=METRICS, device="cpu"), model=tiny_model(), samples=tiny_samples(),
              out=io.StringIO())
    finally:
        torch.set_num_threads(threads)
    return {**{n: (d / n).read_text() for n in (*TABLES, "config.json")}, "units": unit_lines(d)}


def test_two_gloo_processes_resuming_a_torn_run_equal_one(tmp_path, single):
    """Rank 0 and rank 1 compute the missing two thirds of a killed run (round-robin over three batches):
    the tables equal the single-process ones bit for bit, the store has every unit once. The killed run is one
    of an earlier version (a torn ``units.jsonl``), which the columnar store resumes."""
    (tmp_path / "config.json").write_text(single["config.json"])
    lines = [x + "\n" for x in single["units"]]
    cut = len(lines) // 3
    (tmp_path / "units.jsonl").write_text("".join(lines[:cut]) + lines[cut][:10])
    _spawn(tmp_path)
    assert {n: (tmp_path / n).read_text() for n in TABLES} == {n: single[n] for n in TABLES}
    after = unit_lines(tmp_path)
    assert len(after) == len(lines)
    assert len({tuple(json.loads(x)[k] for k in ("method", "layer", "metric", "image")) for x in after}) == len(lines)


def test_the_reduction_is_not_a_mean_of_means(single):
    """The equality above can fail: per-rank means averaged differ from the exact mean when shards differ in size."""
    import csv
    import io

    def rows_of(name):
        return [r for r in csv.DictReader(io.StringIO(single[name]))
                if (r["canonical"], r["layer"], r["metric"], r["subset"]) == ("conv1x1+norm", "3", "deletion(steps=3)", "all")]

    values = [float(r["value"]) for r in rows_of("per_image.csv")]
    assert len(values) == 5  # batches of 2: rank 0 gets images 0, 1, 4 and rank 1 gets 2, 3
    exact = sum(values) / 5
    means_of_means = (sum(values[:2] + values[4:]) / 3 + sum(values[2:4]) / 2) / 2
    assert abs(exact - means_of_means) > 1e-9
    assert float(rows_of("results.csv")[0]["value"]) == pytest.approx(exact, abs=1e-15)



# ------------------------------------------------------------------ ranks that disagree or stop answering
WORKER = os.path.join(os.path.dirname(__file__), "sweep_worker.py")


def _launch(rank_args: list[list[str]], bound: float = 60.0, timeout: str = "45",
            wait: Optional[int] = None) -> list[tuple[int, str, float]]:
    """Start one worker process per rank (env:// as torchrun sets it up); (exit status, stderr, seconds) of the
    first ``wait`` ranks (default all; the others are then killed). Every process is killed after ``bound``
    seconds, so a hang fails the test instead of blocking it. ``timeout`` (EXTAGG_SWEEP_TIMEOUT) leaves a loaded
    machine time to start both ranks: the errors expected come from the comparison, not from the timeout."""
    import subprocess
    import time

    path = os.pathsep.join([os.path.dirname(__file__), *sys.path])
    for attempt in range(3):
        port = _free_port()
        procs, start = [], time.monotonic()
        for rank, args in enumerate(rank_args):
            env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                       WORLD_SIZE=str(len(rank_args)), LOCAL_RANK=str(rank), PYTHONPATH=path,
                       EXTAGG_SWEEP_TIMEOUT=timeout, OMP_NUM_THREADS="1")
            procs.append(subprocess.Popen([sys.executable, WORKER, *args], env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))
        out = []
        for p in procs[:wait]:
            try:
                _, err = p.communicate(timeout=max(1.0, bound - (time.monotonic() - start)))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                err = p.communicate()[1] + "\n[killed: still running after the bound]"
            out.append((p.returncode, err, time.monotonic() - start))
        for q in procs:
            if q.poll() is None:
                q.kill()
            q.communicate()
        if attempt < 2 and any("address already in use" in e.lower() for _, e, _ in out):
            continue
        return out
    return out


def test_ranks_with_different_steps_both_fail_naming_the_field(tmp_path):
    """Every rank's record (configuration, plan, model, versions) is compared before any unit: ranks started
    with different ``steps`` both exit with an error naming ``config.steps``, in bounded time, and nothing is
    computed. (Before, rank 0 checked only itself: both ranks finished with rc 0 and mixed numbers.)"""
    results = _launch([[str(tmp_path), "3", "3"], [str(tmp_path), "4", "3"]])
    for rank, (rc, err, seconds) in enumerate(results):
        assert rc == 3, f"rank {rank}: rc {rc}\n{err[-2000:]}"
        assert "DistributedError" in err and "config.steps" in err and "rank 1" in err, err[-2000:]
        assert seconds < 60
    assert not (tmp_path / "units.jsonl").exists() and not (tmp_path / "units").exists()


def test_a_rank_with_fewer_images_fails_instead_of_hanging(tmp_path):
    """A rank whose data holds fewer images is named by the plan's image list; before, it hung the job."""
    results = _launch([[str(tmp_path), "3", "3"], [str(tmp_path), "3", "2"]])
    for rank, (rc, err, _) in enumerate(results):
        assert rc == 3 and "plan.images" in err, f"rank {rank}: rc {rc}\n{err[-2000:]}"


def test_a_stalled_rank_ends_the_others_within_the_timeout(tmp_path):
    """A rank that joins the group and then never answers ends rank 0 with an error naming it, after the
    EXTAGG_SWEEP_TIMEOUT bound (5 s here) instead of gloo's 30 minutes."""
    results = _launch([[str(tmp_path), "3", "3"], [str(tmp_path), "3", "3", "--stall"]], bound=60, timeout="5",
                      wait=1)
    rc, err, seconds = results[0]
    assert rc == 3, f"rc {rc}\n{err[-2000:]}"
    assert "DistributedError" in err and "stopped answering" in err and "1" in err, err[-2000:]


# ------------------------------------------------------------------ whole batches of the one-process plan
THREE_METRICS = ("sensitivity", "deletion")


class BatchCoupling(torch.nn.Module):
    """Scales the logits by ``1 + 1e-4 * tanh(batch mean)``: every number then depends on which images share the
    batch, so any change of batch composition shows (as rounding differences of a real model's kernels do, less
    reliably)."""

    def forward(self, x):
        return x * (1 + 1e-4 * torch.tanh(x.mean(0, keepdim=True)))


def coupled_model() -> torch.nn.Module:
    return torch.nn.Sequential(*tiny_model(), BatchCoupling()).eval()

THREE = dict(methods=("gradcam", "normgrad"), layers=("3",), metrics=THREE_METRICS, device="cpu")


def test_ranks_compute_the_batches_of_one_process_bit_for_bit(tmp_path):
    """3 images in batches of 2 over 2 ranks: rank 0 computes the plan's batch (im0, im1) and rank 1 the batch
    (im2), as one process does, so every per-image value is the same float, byte for byte (a rank that split
    the images its own way, e.g. (im0, im2) and (im1), would change the numbers: the model here couples the
    images of a batch)."""
    one = tmp_path / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sweep(tiny_config(one, **THREE), model=coupled_model(), samples=tiny_samples(3),
              out=io.StringIO())
    finally:
        torch.set_num_threads(threads)
    _spawn(tmp_path / "two", _worker_three)
    for name in ("per_image.jsonl", "per_image.csv", "results.csv"):
        assert (tmp_path / "two" / name).read_bytes() == (one / name).read_bytes(), name
    units = [sorted(unit_lines(d)) for d in (one, tmp_path / "two")]
    assert units[0] == units[1]
