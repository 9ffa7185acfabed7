"""``extagg sweep``: configuration, command line, resume after a crash or a torn line, refusal of a changed
configuration, determinism, every metric for every kind of method, the pointing game, figures."""
from __future__ import annotations

import io
import json
import math
import re
import shutil

import pytest
import torch
from hypothesis import given

from extagg.cli import build_parser, main
from extagg.errors import InputError
from extagg.evaluation import Sample
from extagg.sweep import SweepConfig, sweep
from extagg.sweep.cli import config_from_args
from extagg.sweep.compute import BatchRunner
from sweep_fixtures import tiny_config, tiny_model, tiny_samples, unit_lines
from strategies import sweep_configs

QUIET = io.StringIO


def run(cfg, samples=None, model=None, **kw):
    return sweep(cfg, model=model or tiny_model(), samples=samples or tiny_samples(), out=QUIET(), **kw)


def files(run_dir):
    return {name: (run_dir / name).read_text() for name in ("results.csv", "per_image.csv", "results.jsonl")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted sweep of the tiny model: its directory, files, printed text and result."""
    d = tmp_path_factory.mktemp("ref")
    out = io.StringIO()
    result = sweep(tiny_config(d), model=tiny_model(), samples=tiny_samples(), out=out)
    return files(d), result, d, out.getvalue()


def copy_run(reference, to):
    """The reference run's configuration and batch files, as a killed run would have left them; the folder of
    batch files."""
    shutil.copytree(reference[2], to)
    for name in ("results.csv", "per_image.csv", "results.jsonl", "per_image.jsonl", "summary.txt"):
        (to / name).unlink()
    return to / "units"


# ----------------------------------------------------------------------------- configuration and CLI
@given(sweep_configs())
def test_config_round_trips_through_json(cfg):
    assert SweepConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_cli_options_become_the_config():
    args = build_parser().parse_args(["sweep", "--methods", "gradcam", "scaling+*", "--layers", "stages", "layer4.*",
                                      "--metrics", "deletion", "--steps", "5", "--combine", "-o", "runs/x",
                                      "--model", "resnet18", "--random-weights", "--no-figures"])
    cfg = config_from_args(args)
    assert cfg.methods == ("gradcam", "scaling+*") and cfg.layers == ("stages", "layer4.*")
    assert cfg.metrics == ("deletion",) and cfg.steps == 5 and cfg.combine == () and cfg.run_dir == "runs/x"
    assert cfg.random_weights and not cfg.figures and cfg.progress
    assert cfg.batch_size == SweepConfig().batch_size  # options not given keep the defaults
    assert config_from_args(build_parser().parse_args(["sweep"])) == SweepConfig()


@pytest.mark.parametrize("argv, words", [
    (["--model", "resnet18"], ["randomly initialised", "--random-weights"]),
    (["--metrics", "pointng"], ["did you mean 'pointing'"]),
    (["--metrics", "pointing"], ["localisation data"]),
    (["--combine", "sum:linaer"], ["MODE:WEIGHTING", "'sum:linaer'"]),
    (["--steps", "0"], ["steps must be an integer >= 1"]),
    (["--data", "voc"], ["--root"]),
    (["--model", "efficientnet-lite0", "--weights", "x.pt"], ["ships its own"]),
])
def test_bad_options_exit_2_with_one_clear_line(capsys, argv, words):
    assert main(["sweep", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("extagg: error: ") and "Traceback" not in err and all(w in err for w in words)


def test_unknown_layer_is_refused_with_a_suggestion(tmp_path):
    with pytest.raises(Exception, match="did you mean '3'") as info:
        run(tiny_config(tmp_path, layers=("input", "33")))
    assert "stages" in str(info.value)  # groups are among the names offered


def test_identity_extractor_chooses_the_twins_and_is_checked(tmp_path):
    """The identity check's real-layer extractor is a config field: its twins sit exactly where it applies."""
    layers = ("0", "1", "3")
    conv = run(tiny_config(tmp_path / "a", metrics=("identity",), methods=("scaling+sum",), layers=layers))
    assert conv.plan.twins == {("scaling+sum", "0"): "conv+sum", ("scaling+sum", "3"): "conv+sum"}
    bn = run(tiny_config(tmp_path / "b", metrics=("identity",), methods=("scaling+sum",), layers=layers,
                         identity_extractor="bn-scale"))
    assert bn.plan.twins == {("scaling+sum", "1"): "bn-scale+sum"}
    assert {r.layer for r in bn.rows if r.metric == "identity(extractor=bn-scale)"} == {"1"}
    with pytest.raises(Exception, match="did you mean 'conv'"):
        run(tiny_config(tmp_path / "c", metrics=("identity",), identity_extractor="cnv"))
    args = build_parser().parse_args(["sweep", "--identity-extractor", "bn-scale"])
    assert config_from_args(args).identity_extractor == "bn-scale"


def test_a_sweep_over_token_layers(tmp_path):
    """A ViT's blocks by pattern (attention modules, which return tuples, left out), with the identity check
    against the real nn.Linear's weight gradient per token."""
    from test_tokens import TinyViT

    torch.manual_seed(0)
    cfg = tiny_config(tmp_path, methods=("normgrad", "scaling+sum"), layers=("blocks.0**",),
                      metrics=("sensitivity", "identity"), identity_extractor="linear", randomise=("head",),
                      combine=())
    result = run(cfg, model=TinyViT().eval(), samples=tiny_samples(2, 16))
    layers = {r.layer for r in result.rows}
    assert {"blocks.0", "blocks.0.fc1", "blocks.0.fc2"} <= layers and "blocks.0.attn" not in layers
    assert set(result.plan.twins) == {(m, layer) for m in ("conv1x1+norm", "scaling+sum")
                                      for layer in ("blocks.0.fc1", "blocks.0.fc2")}
    assert all(math.isfinite(r.value) for r in result.rows if r.metric == "identity")


# ----------------------------------------------------------------------------- outputs
def test_outputs_preview_and_summary(reference):
    _, result, run_dir, text = reference
    plan = result.plan
    assert "unit = method x layer x metric x image" in text and "forward+backward" in text
    assert "meta:conv1x1+norm" in text  # per-example methods are named as costly
    total = sum(len(plan.units(m, plan.image_ids)) for m in plan.metrics)
    assert re.search(rf"\n  total +{total} +0 +{total} ", text)
    assert "sensitivity: spearman [top-vs-bottom] (lower is better; 5 image(s) per cell)" in text
    assert "  floor:cross-image" in text and "  floor:smooth-noise" in text
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["config"]["methods"] == list(tiny_config(run_dir).methods) and cfg["config"]["seed"] == 0
    assert cfg["versions"]["extagg"] and "builtin-extractors" in cfg["versions"]["plugins"]
    assert cfg["plan"]["images"] == [s.image_id for s in tiny_samples()]
    lines = unit_lines(run_dir)
    assert len(lines) == total == len({tuple(json.loads(x)[k] for k in ("method", "layer", "metric", "image"))
                                        for x in lines})
    per_image = [json.loads(x) for x in (run_dir / "per_image.jsonl").read_text().splitlines()]
    assert {r["image"] for r in per_image} == {s.image_id for s in tiny_samples()}


def test_summary_rows_are_exact_reductions_of_per_image_values(reference):
    result = reference[1]
    values = [r.value for r in result.per_image if (r.canonical, r.layer, r.metric, r.measure, r.subset)
              == ("conv1x1+norm", "3", "deletion(steps=3)", "deletion_auc", "all")]
    assert len(values) == 5
    assert result.value("conv1x1+norm", "3", "deletion") == math.fsum(values) / 5
    assert result.value("normgrad", "3", "deletion(steps=3)", "deletion_auc", "all") == math.fsum(values) / 5
    row = next(r for r in result.rows if (r.method, r.layer, r.metric, r.measure, r.subset) ==
               ("gradcam", "input", "sensitivity", "spearman", "top-vs-bottom"))
    assert row.canonical == "pooled-scaling+sum+relu"  # the name the user asked for, the canonical beside it
    nans = [r.value for r in result.per_image if (r.canonical, r.layer, r.metric, r.measure, r.subset) ==
            ("pooled-scaling+sum+relu", "input", "sensitivity", "spearman", "top-vs-bottom")
            and not math.isfinite(r.value)]
    assert row.nan == len(nans) and row.n == 5 - len(nans)


def test_every_metric_for_every_kind_of_method(tmp_path, registry):
    """Plugin extractors, every aggregator, named methods and a pass modifier: every unit gets a value."""
    extractors = [e for e, s in registry.extractors.items() if s.applies_to is None and not any(p.required for p in s.params)]
    methods = ([f"{e}+norm" for e in extractors] + [f"scaling+{a}" for a in registry.aggregators
                                                     if not any(p.required for p in registry.aggregators[a].params)]
               + sorted(registry.aliases) + ["meta:gradcam"])
    cfg = tiny_config(tmp_path, methods=tuple(methods), layers=("input", "0", "3"), combine=("sum:linear",))
    result = run(cfg, samples=tiny_samples(2), registry=registry)
    plan = result.plan
    assert set(plan.methods) >= {registry.canonical(m) for m in methods}
    seen = {(r.canonical, r.layer, r.metric, r.image) for r in result.per_image}
    for metric in plan.metrics:
        for m, layer, _, image in plan.units(metric, plan.image_ids):
            assert (m, layer, metric, image) in seen, (m, layer, metric)
    assert any(layer == "combine:sum:linear" for _, layer in plan.keys("deletion(steps=3)"))
    assert plan.twins  # the identity check found its conv twins at Conv2d layers


# ----------------------------------------------------------------------------- resume, refusal, determinism
def test_an_old_units_jsonl_torn_mid_batch_resumes_to_the_uninterrupted_result(tmp_path, reference):
    """A run directory of the earlier line-per-unit store (``units.jsonl`` cut mid-batch, some metrics of a batch
    done, others not, and a torn last line) resumes: its units are read, the rest is computed into batch files,
    the tables equal the uninterrupted run's, and the old log is left as it was."""
    folder = copy_run(reference, tmp_path / "run")
    lines = [x + "\n" for x in unit_lines(tmp_path / "run")]
    shutil.rmtree(folder)
    keep = len(lines) * 2 // 5
    text = "".join(lines[:keep]) + lines[keep][: len(lines[keep]) // 2]
    (tmp_path / "run" / "units.jsonl").write_text(text)
    run(tiny_config(tmp_path / "run"))
    assert files(tmp_path / "run") == reference[0]
    assert (tmp_path / "run" / "units.jsonl").read_text() == text
    after = unit_lines(tmp_path / "run")
    assert sorted(after) == sorted(x.rstrip("\n") for x in lines)  # every unit once, none torn


def test_a_batch_killed_before_its_rename_is_recomputed_not_half_counted(tmp_path, reference):
    """What a kill between writing a batch file and renaming it leaves (the last batch's file cut in half under
    its temporary name) is ignored and removed; that batch is computed again and the tables equal the
    uninterrupted run's. Guards the commit: a batch counts only once its file is renamed into place."""
    folder = copy_run(reference, tmp_path / "run")
    batches = sorted(folder.glob("*.parquet"))
    assert [p.name for p in batches] == ["00000000.parquet", "00000001.parquet", "00000002.parquet"]  # 5 images / 2
    data = batches[-1].read_bytes()
    batches[-1].unlink()
    (folder / ".batch-killed.tmp").write_bytes(data[: len(data) // 2])
    run(tiny_config(tmp_path / "run"))
    assert files(tmp_path / "run") == reference[0]
    assert sorted(p.name for p in folder.iterdir()) == [p.name for p in batches]
    assert sorted(unit_lines(tmp_path / "run")) == sorted(unit_lines(reference[2]))


def test_a_damaged_batch_file_is_an_input_error_naming_it(tmp_path, reference):
    """A batch file cut short under its final name (a disk fault; the commit never leaves one) is refused with
    an InputError naming it and what to do, never read in part."""
    folder = copy_run(reference, tmp_path / "run")
    path = folder / "00000001.parquet"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"00000001\.parquet' is not a complete Parquet batch file.*remove it"):
        run(tiny_config(tmp_path / "run"))


def test_stored_values_read_back_exactly(tmp_path):
    """float64 bit for bit (a value JSON would round-trip too, and ones it would not: -0.0, subnormals), NaN and
    infinities as NaN, class ints or null, a unit without values, the order of a unit's values."""
    from extagg.sweep.store import RunStore

    store = RunStore(tmp_path / "run")
    store.lock()
    values = [("all", "auc", None, 0.1 + 0.2), ("all", "auc", 3, -0.0), ("x", "m", 2 ** 40, 5e-324),
              ("all", "nan", None, math.nan), ("all", "inf", 7, math.inf)]
    store.append([(("a", "l", "m", "i"), values), (("a", "l", "m", "j"), [])])
    store.commit()
    store.append([(("a", "l", "m", "i"), [("other", "x", None, 1.0)])])  # a unit stored twice: the first counts
    store.commit()
    store.close()
    done = RunStore(tmp_path / "run", writer=False).load()
    assert list(done) == [("a", "l", "m", "i"), ("a", "l", "m", "j")] and done["a", "l", "m", "j"] == []
    got = done["a", "l", "m", "i"]
    assert [g[:3] for g in got] == [v[:3] for v in values]
    assert [g[3].hex() for g in got[:3]] == [v[3].hex() for v in values[:3]]
    assert math.isnan(got[3][3]) and math.isnan(got[4][3])


def test_without_pyarrow_the_sweep_stops_before_any_work_naming_the_install(tmp_path, monkeypatch):
    """The store needs pyarrow: without it the sweep stops at the run directory's check, before any unit, with
    an extagg error naming the install command (not a raw ImportError after the first batch)."""
    import sys

    from extagg.errors import ExtaggError

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setattr(BatchRunner, "run", lambda *a, **k: pytest.fail("computed without a store"))
    with pytest.raises(ExtaggError, match=r"needs pyarrow: `pip install extagg\[sweep\]`"):
        run(tiny_config(tmp_path / "run"))
    assert not (tmp_path / "run" / "config.json").exists()


def test_resume_after_a_crash_equals_uninterrupted(tmp_path, reference, monkeypatch):
    calls = {"n": 0}
    real = BatchRunner.run

    def crash_in_second_batch(self, *a, **k):  # after the first metric of the second batch is stored
        calls["n"] += 1
        for i, item in enumerate(real(self, *a, **k)):
            if calls["n"] == 2 and i == 1:
                raise KeyboardInterrupt("killed")
            yield item

    monkeypatch.setattr(BatchRunner, "run", crash_in_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(tmp_path))
    partial = len(unit_lines(tmp_path))
    monkeypatch.setattr(BatchRunner, "run", real)
    out = io.StringIO()
    sweep(tiny_config(tmp_path), model=tiny_model(), samples=tiny_samples(), out=out)
    assert 0 < partial and f"{partial:>8}" in out.getvalue()  # the preview counts what was done
    assert files(tmp_path) == reference[0]


def test_a_finished_sweep_reruns_without_computing(tmp_path, reference, monkeypatch):
    copy_run(reference, tmp_path / "run")
    monkeypatch.setattr(BatchRunner, "run", lambda *a, **k: pytest.fail("recomputed a finished sweep"))
    run(tiny_config(tmp_path / "run"))
    assert files(tmp_path / "run") == reference[0]


def test_changed_configuration_is_refused(tmp_path):
    run(tiny_config(tmp_path, metrics=("identity",)))
    with pytest.raises(InputError, match="different config: steps was 3, now 4"):
        run(tiny_config(tmp_path, metrics=("identity",), steps=4))
    with pytest.raises(InputError, match="different plan: images"):
        run(tiny_config(tmp_path, metrics=("identity",)), samples=tiny_samples(4))
    run(tiny_config(tmp_path, metrics=("identity",), progress=True, figures=False))  # not a result field
    # a run directory from before a field existed resumes when the field has its default, and only then
    path = tmp_path / "config.json"
    record = json.loads(path.read_text())
    del record["config"]["identity_extractor"]
    path.write_text(json.dumps(record))
    run(tiny_config(tmp_path, metrics=("identity",)))
    with pytest.raises(InputError, match='different config: identity_extractor was "conv", now "bn-scale"'):
        run(tiny_config(tmp_path, metrics=("identity",), identity_extractor="bn-scale"))


def test_randomisation_similarities_in_chunks_equal_one_call(tmp_path, reference, monkeypatch):
    """The similarities are computed per chunk of (method, layer) keys to bound memory: with one key per chunk
    every number equals the reference run's (one chunk for all keys), bit for bit."""
    import extagg_builtins.metrics as builtin_metrics

    monkeypatch.setattr(builtin_metrics, "SIMILARITY_PIXELS", 1)
    run(tiny_config(tmp_path))
    assert files(tmp_path) == reference[0]


def test_the_seed_matters(tmp_path, reference):
    """Same command, same numbers is shown by the resume tests (separate runs equal the reference bit for bit);
    they could fail: another seed gives other randomisation numbers."""
    other = run(tiny_config(tmp_path, seed=1, metrics=("randomisation",), methods=("normgrad",)))
    key = ("conv1x1+norm", "3", "randomisation", "spearman", "cascading:7")
    assert other.value(*key) != reference[1].value(*key)


# ----------------------------------------------------------------------------- pointing, figures
def test_pointing_counts_hits_per_class_and_the_centre_baseline(tmp_path):
    h = w = 32
    near, far = torch.zeros(1, h, w, dtype=torch.bool), torch.zeros(1, h, w, dtype=torch.bool)
    near[0, 14:18, 14:18] = True  # the centre (16, 16) hits
    far[0, 0:2, 0:2] = True       # 20 px from the centre: a miss
    g = torch.Generator().manual_seed(3)
    samples = [Sample(torch.rand(3, h, w, generator=g), "a", (1,), near),
               Sample(torch.rand(3, h, w, generator=g), "b", (1,), far),
               Sample(torch.rand(3, h, w, generator=g), "c", (2,), near)]
    result = run(tiny_config(tmp_path, metrics=("pointing", "identity"), methods=("gradcam",), layers=("3",),
                             combine=()), samples=samples)
    assert next(r for r in result.rows if r.metric == "identity").n == 3  # other metrics still run
    centre = {r.subset: r for r in result.rows if r.metric == "pointing" and r.subset.startswith("floor:")}
    # class 1: 1 hit of 2, class 2: 1 of 1 -> mean of per-class accuracies 0.75 over 3 evaluations
    assert centre["floor:centre"].value == 0.75 and centre["floor:centre"].n == 3
    row = next(r for r in result.rows if r.method == "gradcam" and r.metric == "pointing" and r.subset == "all")
    assert row.measure == "hit" and row.n == 3 and 0 <= row.value <= 1


def test_figures_are_written(tmp_path):
    from PIL import Image

    run(tiny_config(tmp_path, figures=True, methods=("gradcam", "normgrad"), metrics=("sensitivity",)),
                 samples=tiny_samples(2))
    names = {"metric_vs_layer.png", "ranking.png", "combination.png", "grid.png"}
    assert {p.name for p in (tmp_path / "figures").iterdir()} == names
    for name in names:
        with Image.open(tmp_path / "figures" / name) as im:
            assert im.size[0] > 100 and im.size[1] > 100

