"""Two processes with gloo on the CPU give exactly the single-process numbers, also when resuming."""
from __future__ import annotations

import io
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from extagg.sweep import sweep
from sweep_fixtures import tiny_config, tiny_model, tiny_samples

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
METRICS = ("sensitivity", "randomisation", "deletion")
TABLES = ("results.csv", "per_image.csv")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, run_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    sweep(tiny_config(run_dir, metrics=METRICS, device="cpu"), model=tiny_model(), samples=tiny_samples(),
          out=io.StringIO())


def _spawn(run_dir) -> None:
    """Rendezvous through env:// as torchrun sets it up; the free port can be taken by another process before
    rank 0 binds it, so a rendezvous that finds it in use is retried on a new port (nothing is written before)."""
    for attempt in range(3):
        try:
            mp.spawn(_worker, args=(2, _free_port(), str(run_dir)), nprocs=2, join=True)
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
    return {n: (d / n).read_text() for n in (*TABLES, "config.json", "units.jsonl")}


def test_two_gloo_processes_resuming_a_torn_run_equal_one(tmp_path, single):
    """Rank 0 and rank 1 compute the missing two thirds of a killed run (round-robin over three batches):
    the tables equal the single-process ones bit for bit, the log has every unit once."""
    (tmp_path / "config.json").write_text(single["config.json"])
    lines = single["units.jsonl"].splitlines(keepends=True)
    cut = len(lines) // 3
    (tmp_path / "units.jsonl").write_text("".join(lines[:cut]) + lines[cut][:10])
    _spawn(tmp_path)
    assert {n: (tmp_path / n).read_text() for n in TABLES} == {n: single[n] for n in TABLES}
    after = (tmp_path / "units.jsonl").read_text().splitlines()
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
