"""The sweep's run-directory store at scale: write and reduce ``--rows`` synthetic unit rows (default 1e7).

Rows are shaped like a sweep's: ``--units-per-batch`` units per committed batch, ``--values`` values per unit
(subset, measure, class or null, float64 value with some NaN), methods x layers x metrics x images named as a
sweep names them. Measured, each in this process:

* **write**: every batch through :class:`extagg.sweep.store.RunStore` (``append`` + ``commit``: one Parquet file,
  fsync, rename, fsync of the folder per batch); seconds, rows/s, bytes on disk, seconds per commit;
* **read**: all batch files as one pyarrow table (``RunStore.table``), and as the unit dictionary the sweep
  reduces (``RunStore.load``; skipped above ``--load-limit`` rows: it holds a Python object per value);
* **reduce**: the columnar mean / count / NaN count per (method, layer, metric, subset, measure) with pyarrow;
* **legacy** (``--legacy``): the earlier store, one JSON line per unit appended with an fsync per append call.

The **overhead** line relates the store to a sweep's wall time: the time to commit one batch of
``--sweep-units`` units and read them back (the default sweep: 435 units in 1 batch) over ``--sweep-seconds`` (the default sweep's
wall time; docs/performance.md gives the idle-machine figure), as a fraction; the goal is <= 2 %.

    python benchmarks/bench_store.py                        # 1e7 rows (about 1 GB of memory at most)
    python benchmarks/bench_store.py --rows 100000 --legacy  # a quick check, with the earlier store beside it
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from extagg.sweep.store import RunStore  # noqa: E402

SUBSETS = (("all", "deletion_auc"), ("all", "insertion_auc"), ("top-vs-bottom", "spearman"),
           ("floor:cross-image", "spearman"), ("cascading:3", "ssim"), ("all", "identity"))


def synthetic_batches(rows: int, units_per_batch: int, values: int, seed: int = 0):
    """Batches of ``[(unit, [(subset, measure, cls, value), ...]), ...]`` totalling ``rows`` value rows."""
    rng = random.Random(seed)
    units_total = max(1, rows // values)
    metrics = ("sensitivity", "randomisation", "identity", "deletion(steps=8)", "insertion(steps=8)", "pointing")
    batch, n = [], 0
    for k in range(units_total):
        image, rest = divmod(k, 2000 * len(metrics))
        pair, metric = divmod(rest, len(metrics))
        unit = (f"method{pair % 200}+norm", f"layer{pair // 200}", metrics[metric], f"{image:08d}")
        vals = [(s, m, (c if metric == 5 else None), (math.nan if rng.random() < 0.01 else rng.random()))
                for c, (s, m) in enumerate(SUBSETS[:values])]
        batch.append((unit, vals))
        n += 1
        if n == units_per_batch:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


def write(folder, rows, units_per_batch, values) -> dict:
    store = RunStore(folder)
    store.lock()
    t, commits, batches = 0.0, [], 0
    try:
        for batch in synthetic_batches(rows, units_per_batch, values):
            t0 = time.perf_counter()
            store.append(batch)
            store.commit()
            dt = time.perf_counter() - t0
            t += dt
            commits.append(dt)
            batches += 1
    finally:
        store.close()
    size = sum(os.path.getsize(os.path.join(folder, "units", f)) for f in os.listdir(os.path.join(folder, "units")))
    commits.sort()
    return {"seconds": t, "batches": batches, "bytes": size, "median_commit_s": commits[len(commits) // 2]}


def legacy_write(folder, rows, units_per_batch, values) -> dict:
    """The earlier store: a JSON line per unit, appended with flush + fsync per append call (one per batch here;
    the sweep made one per metric of a batch)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "units.jsonl")
    t = 0.0
    for batch in synthetic_batches(rows, units_per_batch, values):
        t0 = time.perf_counter()
        lines = [json.dumps({"method": u[0], "layer": u[1], "metric": u[2], "image": u[3],
                             "values": [[s, m, c, None if math.isnan(v) else v] for s, m, c, v in vals]},
                            allow_nan=False) + "\n" for u, vals in batch]
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
        t += time.perf_counter() - t0
    return {"seconds": t, "bytes": os.path.getsize(path)}


def reduce(table):
    import pyarrow.compute as pc

    value = table.column("value")
    finite = pc.invert(pc.is_nan(value))
    t = table.append_column("ok", finite).append_column("ok_value", pc.if_else(finite, value, 0.0))
    return t.group_by(["method", "layer", "metric", "subset", "measure"]).aggregate(
        [("ok_value", "sum"), ("ok", "sum"), ("value", "count")])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=float, default=1e7, help="value rows to write (default 1e7)")
    p.add_argument("--units-per-batch", type=int, default=10_000,
                   help="units per committed batch (default 10000: batch 4 x 2500 (method, layer, metric))")
    p.add_argument("--values", type=int, default=4, choices=range(1, len(SUBSETS) + 1),
                   help="values per unit (default 4)")
    p.add_argument("--sweep-seconds", type=float, default=125.0,
                   help="the default sweep's wall time the overhead is a fraction of (default 125: 2 min 05 s, "
                        "the idle-machine figure of docs/performance.md)")
    p.add_argument("--sweep-units", type=int, default=435, help="units of that sweep, in one batch (default 435)")
    p.add_argument("--load-limit", type=float, default=2e6, help="time RunStore.load only up to this many rows")
    p.add_argument("--legacy", action="store_true", help="also time the earlier JSON-lines store")
    p.add_argument("--dir", default=None, help="where to write (default: a temporary folder, removed after)")
    args = p.parse_args(argv)
    rows = int(args.rows)
    base = args.dir or tempfile.mkdtemp(prefix="extagg-bench-store-")
    out = {}
    try:
        run = os.path.join(base, "run")
        out["write"] = write(run, rows, args.units_per_batch, args.values)
        store = RunStore(run, writer=False)
        t0 = time.perf_counter()
        table = store.table()
        out["read_table_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        groups = reduce(table)
        out["reduce_s"] = time.perf_counter() - t0
        out["groups"] = groups.num_rows
        out["rows"] = table.num_rows
        del table, groups
        if rows <= args.load_limit:
            t0 = time.perf_counter()
            done = store.load()
            out["load_dict_s"] = time.perf_counter() - t0
            del done
        small = os.path.join(base, "sweep")
        commit = []
        for k in range(5):
            r = write(os.path.join(small, str(k)), args.sweep_units * args.values, args.sweep_units, args.values)
            t0 = time.perf_counter()
            RunStore(os.path.join(small, str(k)), writer=False).load()  # the sweep reads its units back once
            commit.append(r["seconds"] + time.perf_counter() - t0)
        commit.sort()
        out["default_sweep_store_s"] = commit[2]
        out["overhead"] = commit[2] / args.sweep_seconds
        if args.legacy:
            out["legacy"] = legacy_write(os.path.join(base, "legacy"), rows, args.units_per_batch, args.values)
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    w = out["write"]
    print(f"store benchmark: {out['rows']:,} rows, {w['batches']:,} batches of {args.units_per_batch:,} units x "
          f"{args.values} values")
    print("| step | seconds | rows/s | note |")
    print("|---|---|---|---|")
    print(f"| write (append + commit) | {w['seconds']:.2f} | {out['rows'] / w['seconds']:,.0f} | "
          f"{w['bytes'] / 2**20:.1f} MiB on disk ({w['bytes'] / out['rows']:.2f} B/row); median commit "
          f"{w['median_commit_s'] * 1000:.1f} ms |")
    print(f"| read (one pyarrow table) | {out['read_table_s']:.2f} | {out['rows'] / out['read_table_s']:,.0f} | |")
    print(f"| reduce (columnar group-by) | {out['reduce_s']:.2f} | {out['rows'] / out['reduce_s']:,.0f} | "
          f"{out['groups']:,} groups |")
    if "load_dict_s" in out:
        print(f"| load (unit dict, as the sweep) | {out['load_dict_s']:.2f} | "
              f"{out['rows'] / out['load_dict_s']:,.0f} | |")
    if "legacy" in out:
        lg = out["legacy"]
        print(f"| legacy write (JSON lines + fsync) | {lg['seconds']:.2f} | {out['rows'] / lg['seconds']:,.0f} | "
              f"{lg['bytes'] / 2**20:.1f} MiB |")
    print(f"overhead on the default sweep: {out['default_sweep_store_s'] * 1000:.1f} ms to commit and read back "
          f"its {args.sweep_units} units / {args.sweep_seconds:.0f} s wall = {out['overhead'] * 100:.3f} % "
          f"(goal <= 2 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
