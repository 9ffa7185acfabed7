"""``extagg report`` data and the maps a sweep saves: the bootstrap interval (seeded, equal to a hand computation,
NaN left out, class-balanced for the pointing game), n / nan / floors in the report's rows, ``--save-maps``
none / thumbs / full (shapes, values, nothing for none), maps written before a batch's units and kept on resume,
the size estimate in the preview, the command line, and escaping of names in the page."""
from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pytest
import torch

from extagg import saliency
from extagg.cli import main
from extagg.evaluation import Sample
from extagg.report import build_report, gather
from extagg.report.bootstrap import bootstrap_ci
from extagg.report.data import cell_seed
from extagg.sweep import sweep
from extagg.sweep.saved_maps import batch_path, estimate_bytes, read_batches
from extagg.sweep.store import RunStore
from sweep_fixtures import tiny_config, tiny_model, tiny_samples, unit_lines

FAST = dict(metrics=("sensitivity", "deletion"))


def run(cfg, samples=None, out=None):
    return sweep(cfg, model=tiny_model(), samples=samples or tiny_samples(), out=out or io.StringIO())


def _quantile(sorted_values, q):
    """NumPy's default (linear) quantile, by hand."""
    pos = q * (len(sorted_values) - 1)
    i = math.floor(pos)
    j = min(i + 1, len(sorted_values) - 1)
    return sorted_values[i] + (sorted_values[j] - sorted_values[i]) * (pos - i)


# ----------------------------------------------------------------------------- the bootstrap
def test_bootstrap_ci_is_seeded_and_equals_a_hand_computation():
    """Guards the interval's definition: resample indices from default_rng(seed), mean per resample, the 2.5% and
    97.5% linear quantiles; the same seed gives the same interval and another seed another one."""
    values = [0.1, 0.5, 0.9, 0.3, -0.2]
    idx = np.random.default_rng(7).integers(0, 5, size=(11, 5))
    means = sorted(math.fsum(values[k] for k in row) / 5 for row in idx.tolist())
    lo, hi = bootstrap_ci(values, seed=7, reps=11)
    assert lo == pytest.approx(_quantile(means, 0.025), abs=1e-12)
    assert hi == pytest.approx(_quantile(means, 0.975), abs=1e-12)
    assert bootstrap_ci(values, seed=7, reps=11) == (lo, hi)
    assert bootstrap_ci(values, seed=8, reps=11) != (lo, hi)
    wide = bootstrap_ci(values, seed=7, reps=11, level=0.99)
    assert wide[0] <= lo and wide[1] >= hi


def test_bootstrap_ci_leaves_out_nan_and_needs_two_values():
    """Guards n/nan semantics: NaN is undefined (left out, as in the mean), and one defined value has no interval."""
    assert bootstrap_ci([0.2, math.nan, 0.6, 0.4], seed=3) == bootstrap_ci([0.2, 0.6, 0.4], seed=3)
    assert all(math.isnan(v) for v in bootstrap_ci([0.2, math.nan], seed=3))
    assert bootstrap_ci([0.5, 0.5, 0.5], seed=3) == (0.5, 0.5)


def test_bootstrap_ci_with_classes_averages_per_class_first():
    """Guards the pointing game's statistic: the mean over classes of each class's mean, per resample."""
    values, classes = [1.0, 0.0, 1.0, 1.0], [3, 3, 3, 9]
    idx = np.random.default_rng(5).integers(0, 4, size=(9, 4)).tolist()
    stats = []
    for row in idx:
        per = {}
        for k in row:
            per.setdefault(classes[k], []).append(values[k])
        stats.append(math.fsum(math.fsum(v) / len(v) for v in per.values()) / len(per))
    stats.sort()
    lo, hi = bootstrap_ci(values, seed=5, reps=9, classes=classes)
    assert (lo, hi) == pytest.approx((_quantile(stats, 0.025), _quantile(stats, 0.975)), abs=1e-12)
    assert (lo, hi) != pytest.approx(bootstrap_ci(values, seed=5, reps=9))  # the plain mean differs here


# ----------------------------------------------------------------------------- the report's rows
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    out = io.StringIO()
    result = run(tiny_config(d, **FAST), out=out)
    return d, result, out.getvalue()


def test_rows_carry_n_nan_intervals_and_floors(reference):
    """Guards the table's numbers: n and nan equal the per-image counts, each interval is the seeded bootstrap of
    that cell's per-image values, floors sit beside the measured value and are not rows of their own."""
    d, result, _ = reference
    data = gather(d)
    seed = json.loads((d / "config.json").read_text())["config"]["seed"]
    per = {}
    for v in result.per_image:
        per.setdefault((v.canonical, v.layer, v.metric, v.measure, v.subset), []).append(v.value)
    rows = data["rows"]
    assert rows and not any(r["subset"].startswith("floor:") for r in rows)
    checked_nan = 0
    for r in rows:
        values = per[r["canonical"], r["layer"], r["metric"], r["measure"], r["subset"]]
        assert r["n"] == sum(math.isfinite(v) for v in values)
        assert r["nan"] == len(values) - r["n"]
        checked_nan += r["nan"] > 0
        lo, hi = bootstrap_ci(values, cell_seed(seed, _Row(r)))
        assert (r["lo"], r["hi"]) == ((None, None) if math.isnan(lo) else (lo, hi))
    assert checked_nan  # the tiny sweep has cells with undefined images (constant maps)
    sens = [r for r in rows if r["metric"] == "sensitivity"]
    assert sens and all({"floor:cross-image", "floor:smooth-noise"} <= set(r["floors"]) for r in sens)
    floor = next(x for x in result.rows if x.subset == "floor:smooth-noise" and x.metric == "sensitivity")
    mine = next(r for r in sens if (r["canonical"], r["layer"], r["measure"]) ==
                (floor.canonical, floor.layer, floor.measure))
    assert mine["floors"]["floor:smooth-noise"]["value"] == pytest.approx(floor.value)
    assert any(r["layer"].startswith("combine:") for r in rows) and "combine:sum:linear" in data["layers"]


def test_charts_use_each_metrics_headline_subset(tmp_path):
    """Guards the charts' default subset: randomisation's headline is its last cascading step, not the first
    subset in the rows (the sweep hands its registry to the report)."""
    from extagg.registry import default_registry

    run(tiny_config(tmp_path, metrics=("randomisation(checkpoints=2)",)))
    page = (tmp_path / "report.html").read_text()
    start = page.index('<script id="report-data" type="application/json">') + len(
        '<script id="report-data" type="application/json">')
    data = json.loads(page[start:page.index("</script>", start)])
    subsets = list(dict.fromkeys(r["subset"] for r in data["rows"]))
    assert len(subsets) == 2 and all(s.startswith("cascading:") for s in subsets)
    (head,) = data["headline"].values()
    assert head == subsets[-1] != subsets[0]
    assert gather(tmp_path, registry=default_registry())["headline"] == data["headline"]


class _Row:
    def __init__(self, d):
        self.__dict__.update(d)


def test_the_sweep_writes_the_report_with_one_thumbnail_per_computed_map(reference):
    """Guards the gallery's completeness: one thumbnail per (image, method, layer) that has units."""
    d, result, text = reference
    assert (d / "report.html").is_file() and "report:" in text
    html, counts = build_report(d)
    computed = {(u["image"], u["method"], u["layer"]) for u in map(json.loads, unit_lines(d))}
    assert counts["thumbnails"] == len(computed) == html.count('class="thumb"')
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html


# ----------------------------------------------------------------------------- saving the maps
def test_save_maps_none_writes_nothing(tmp_path):
    """Guards --save-maps none: no maps folder, no size line in the preview, a gallery that says why it is empty."""
    out = io.StringIO()
    run(tiny_config(tmp_path, save_maps="none", **FAST), out=out)
    assert not (tmp_path / "maps").exists()
    assert "maps saved" not in out.getvalue()
    html, counts = build_report(tmp_path)
    assert counts["thumbnails"] == 0 and "--save-maps none" in html


@pytest.mark.parametrize("mode, side, dtype", [("thumbs", 64, np.float16), ("full", 96, np.float32)])
def test_saved_maps_shapes_and_values(tmp_path, mode, side, dtype):
    """Guards the file format: thumbs are at most 64 px float16 scaled by their largest |value|, full maps are the
    float32 maps at the input size, equal to extagg.saliency's for the explained (predicted) class."""
    samples = tiny_samples(2, size=96)
    model = tiny_model()
    sweep(tiny_config(tmp_path, save_maps=mode, metrics=("deletion",)), model=model, samples=samples,
          out=io.StringIO())
    with np.load(batch_path(tmp_path, 0)) as f:
        index = json.loads(str(f["index"]))
        assert f["maps"].dtype == dtype and f["photos"].dtype == np.uint8
        k, n = len(index["keys"]), 2
        assert f["maps"].shape == (k, n, side, side) and f["photos"].shape == (n, 3, side, side)
        assert f["scale"].shape == (k, n)
        if mode == "thumbs":
            assert np.nanmax(np.abs(f["maps"].astype(np.float32))) == pytest.approx(1.0)
    assert index["images"] == ["im0", "im1"] and index["size"] == [96, 96] and index["mode"] == mode
    assert ["gradcam", "combine:sum:linear"] not in index["keys"]  # keys are canonical methods
    batch = next(read_batches(tmp_path))
    key = index["keys"].index(["pooled-scaling+sum+relu", "3"])
    x = torch.stack([s.image for s in samples[:2]])
    direct = saliency(model, x, "gradcam", "3", resize=True)["gradcam", "3"][:, 0].numpy()
    assert index["classes"] == model(x).argmax(1).tolist()
    if mode == "full":
        np.testing.assert_allclose(batch["maps"][key], direct, rtol=1e-5, atol=1e-6)
    else:
        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(direct), (64, 64)).numpy()
        np.testing.assert_allclose(batch["maps"][key], pooled, rtol=2e-3, atol=2e-3 * np.abs(pooled).max())


def test_maps_are_written_before_units_and_kept_on_resume(tmp_path, monkeypatch):
    """Guards resume consistency: a batch killed after its maps but before any of its units has its maps file;
    the resumed run's maps equal an uninterrupted run's, and a finished batch's file is not rewritten."""
    ref = tmp_path / "ref"
    run(tiny_config(ref, **FAST))
    real_append, appended = RunStore.append, {"n": 0}

    def killed_at_the_second_batch(self, units):
        units = list(units)
        if any(u[3] == "im2" for u, _ in units):
            raise KeyboardInterrupt("killed")
        appended["n"] += 1
        real_append(self, units)

    monkeypatch.setattr(RunStore, "append", killed_at_the_second_batch)
    d = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(d, **FAST))
    monkeypatch.setattr(RunStore, "append", real_append)
    logged = {json.loads(x)["image"] for x in unit_lines(d)}
    assert logged == {"im0", "im1"} and appended["n"] > 0
    assert batch_path(d, 0).is_file() and batch_path(d, 2).is_file()  # written before any unit of batch 2
    assert not batch_path(d, 4).exists()
    first = os.stat(batch_path(d, 0))
    os.utime(batch_path(d, 0), ns=(first.st_atime_ns, first.st_mtime_ns - 10**9))
    before = os.stat(batch_path(d, 0)).st_mtime_ns
    run(tiny_config(d, **FAST))
    assert os.stat(batch_path(d, 0)).st_mtime_ns == before  # the finished batch kept its file
    mine, theirs = list(read_batches(d)), list(read_batches(ref))
    assert [b["index"] for b in mine] == [b["index"] for b in theirs] and len(mine) == 3
    for a, b in zip(mine, theirs):
        np.testing.assert_array_equal(a["maps"], b["maps"])
        np.testing.assert_array_equal(a["photos"], b["photos"])


def test_a_resume_with_other_save_maps_is_refused(tmp_path):
    """Guards that every batch of a run directory holds the same kind of maps."""
    from extagg.errors import InputError

    run(tiny_config(tmp_path, **FAST))
    with pytest.raises(InputError, match="save_maps"):
        run(tiny_config(tmp_path, save_maps="full", **FAST))


def test_preview_estimates_the_saved_maps_size(tmp_path):
    """Guards the cost preview's size line: the maps and photos of every batch, before compression."""
    out = io.StringIO()
    result = run(tiny_config(tmp_path, **FAST), out=out)
    keys = {(r.canonical, r.layer) for r in result.rows}
    n_maps = len(keys) * 5
    assert f"{n_maps} maps and 5 photos" in out.getvalue()
    assert estimate_bytes("thumbs", n_maps, 5, (32, 32)) == n_maps * (32 * 32 * 2 + 4) + 5 * 3 * 32 * 32
    assert estimate_bytes("full", 1, 0, (200, 100)) == 200 * 100 * 4 + 4
    assert estimate_bytes("thumbs", 1, 0, (200, 100)) == 64 * 32 * 2 + 4
    assert estimate_bytes("none", n_maps, 5, (32, 32)) == 0


# ----------------------------------------------------------------------------- the command line and the page
def test_report_command_writes_the_page_and_refuses_a_missing_run(tmp_path, reference, capsys):
    """Guards ``extagg report``: the page at RUN_DIR/report.html or -o, and exit 2 naming a missing run."""
    d = reference[0]
    out = tmp_path / "page.html"
    assert main(["report", str(d), "-o", str(out)]) == 0
    assert "map thumbnails" in capsys.readouterr().out and out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "config.json" in err


def test_names_are_escaped_in_the_page(tmp_path):
    """Guards against markup in an image id breaking (or scripting) the page."""
    bad = "</script><img src=x onerror=alert(1)>"
    samples = [Sample(s.image, image_id=(bad if i == 0 else s.image_id)) for i, s in enumerate(tiny_samples(2))]
    run(tiny_config(tmp_path, **FAST), samples=samples)
    html, counts = build_report(tmp_path)
    assert bad not in html and counts["thumbnails"] > 0
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html


# ----------------------------------------------------------------------------- many processes
def _two_ranks(rank: int, world: int, port: int, run_dir: str) -> None:
    import sys

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    sweep(tiny_config(run_dir, device="cpu", **FAST), model=tiny_model(), samples=tiny_samples(), out=io.StringIO())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as the distributed sweep tests: no interpreter teardown under gloo


def test_two_ranks_save_the_maps_of_one_process(tmp_path):
    """Guards the distributed path: rank 1's batches reach rank 0, which writes them; the files equal one
    process's."""
    import socket

    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(tiny_config(tmp_path / "one", device="cpu", **FAST))
    finally:
        torch.set_num_threads(threads)
    for attempt in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            mp.spawn(_two_ranks, args=(2, port, str(tmp_path / "two")), nprocs=2, join=True)
            break
        except mp.ProcessRaisedException as exc:
            if attempt == 2 or "address already in use" not in str(exc).lower():
                raise
    one, two = list(read_batches(tmp_path / "one")), list(read_batches(tmp_path / "two"))
    assert len(two) == 3 and [b["index"] for b in two] == [b["index"] for b in one]
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a["maps"], b["maps"])
        np.testing.assert_array_equal(a["photos"], b["photos"])


def test_a_run_of_per_image_metrics_only_saves_its_maps_too(tmp_path):
    """Guards the fallback pass: with only the pointing game (no shared pass), each batch still gets the maps of
    the explained class, equal to extagg.saliency's, and the report draws them and the pointing intervals."""
    h = w = 32
    box = torch.zeros(1, h, w, dtype=torch.bool)
    box[0, 10:20, 10:20] = True
    g = torch.Generator().manual_seed(3)
    samples = [Sample(torch.rand(3, h, w, generator=g), f"p{i}", (i % 2,), box) for i in range(3)]
    model = tiny_model()
    result = sweep(tiny_config(tmp_path, metrics=("pointing",), methods=("gradcam",), layers=("3",), combine=(),
                               save_maps="full"), model=model, samples=samples, out=io.StringIO())
    assert result.rows and all(r.metric.startswith("pointing") for r in result.rows)
    batches = list(read_batches(tmp_path))
    assert [b["index"]["images"] for b in batches] == [["p0", "p1"], ["p2"]]
    x = torch.stack([s.image for s in samples])
    direct = saliency(model, x, "gradcam", "3", resize=True)["gradcam", "3"][:, 0].numpy()
    got = np.concatenate([b["maps"][0] for b in batches])
    np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-6)
    html, counts = build_report(tmp_path)
    assert counts["thumbnails"] == 3
    row = next(r for r in gather(tmp_path)["rows"] if r["subset"] == "all")
    assert row["n"] == 3 and "floor:centre" in row["floors"]
