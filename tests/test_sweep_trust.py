"""The sweep's run directory, data folder, provenance and random state under misuse and concurrency: each test
names what it guards; the multi-process ones are bounded by timeouts."""
from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from extagg.errors import InputError
from extagg.sweep import sweep
from extagg.sweep.fingerprint import describe_preprocess, first_difference, model_fingerprint
from extagg.sweep.store import RunStore, write_atomic
from sweep_fixtures import tiny_config, tiny_model, tiny_samples, unit_lines

WORKER = os.path.join(os.path.dirname(__file__), "sweep_worker.py")


def small(run_dir, **kw):
    base = dict(methods=("gradcam",), layers=("3",), metrics=("deletion",), device="cpu")
    base.update(kw)
    return tiny_config(run_dir, **base)


def run(run_dir, model=None, n=2, **kw):
    return sweep(small(run_dir, **kw), model=model or tiny_model(), samples=tiny_samples(n), out=io.StringIO())


# ----------------------------------------------------------------- the lock and concurrent sweeps
def test_a_locked_run_directory_is_refused_naming_the_holder(tmp_path):
    """The writer holds an exclusive lock for the whole run; a second sweep on the directory is refused with
    the holder's pid and host, and can run once the lock is released."""
    holder = RunStore(tmp_path / "run")
    holder.lock()
    try:
        with pytest.raises(InputError, match=f"pid {os.getpid()} on host {socket.gethostname()}"):
            run(tmp_path / "run")
        assert not (tmp_path / "run" / "config.json").exists()
    finally:
        holder.close()
    run(tmp_path / "run")
    assert (tmp_path / "run" / "results.csv").is_file()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The stored units of the small sweep with steps 3 and 4, one thread, as each racing process computes it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for steps in (3, 4):
            d = tmp_path_factory.mktemp(f"ref{steps}")
            sweep(small(d, steps=steps), model=tiny_model(), samples=tiny_samples(3), out=io.StringIO())
            out[steps] = sorted(unit_lines(d))
    finally:
        torch.set_num_threads(threads)
    return out


def test_two_sweeps_started_together_on_a_new_directory(tmp_path, reference):
    """Two processes released at the same instant, just before the run directory's check, on one new run
    directory with different ``steps``: one
    finishes, the other is refused (the lock, or the configuration it finds), and config.json and the stored units
    agree with each other (the winner's steps, the winner's units, each once). Before the lock both checked
    an absent config.json, both wrote it and both appended to units.jsonl."""
    run_dir, go = tmp_path / "run", tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        env.pop(k, None)
    procs = {steps: subprocess.Popen([sys.executable, WORKER, str(run_dir), str(steps), "3", "--go", str(go)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for steps in (3, 4)}
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go.ready.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # both have loaded and stopped before the run directory's check
    go.touch()
    results = {}
    for steps, p in procs.items():
        try:
            results[steps] = (p.wait(timeout=60), p.stderr.read())
        except subprocess.TimeoutExpired:
            for q in procs.values():
                q.kill()
            pytest.fail(f"the sweep with steps {steps} still ran after 60 s")
    winners = [s for s, (rc, _) in results.items() if rc == 0]
    assert len(winners) == 1, results
    loser = 7 - winners[0]
    rc, err = results[loser]
    assert rc == 3 and ("in use by another sweep" in err or "steps" in err), err[-2000:]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["steps"] == winners[0]
    assert sorted(unit_lines(run_dir)) == reference[winners[0]]
    assert [p.name for p in [*run_dir.iterdir(), *(run_dir / "units").iterdir()] if p.name.endswith(".tmp")] == []


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.filterwarnings("ignore:resuming .* with different versions")
def test_a_sweep_killed_by_sigkill_resumes_bit_for_bit(tmp_path, reference):
    """A sweep process killed with SIGKILL after its first batch is durable (and while the next is computed)
    resumes to units equal to an uninterrupted run's, float for float, each once: the committed batch is kept,
    the batch in flight is computed again and never half-counted."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        env.pop(k, None)
    p = subprocess.Popen([sys.executable, WORKER, str(run_dir), "3", "3", "--slow", "2"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list((run_dir / "units").glob("*.parquet")) and time.monotonic() < deadline:
            assert p.poll() is None, p.stderr.read()[-2000:]
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == -signal.SIGKILL  # killed, not finished
    partial = unit_lines(run_dir)
    assert 0 < len(partial) < len(reference[3])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(run_dir, n=3, steps=3)
    finally:
        torch.set_num_threads(threads)
    assert sorted(unit_lines(run_dir)) == reference[3]


def test_write_atomic_never_writes_through_a_planted_temporary_name(tmp_path):
    """A symbolic link planted at the old fixed temporary name ``<file>.tmp`` no longer redirects the write:
    the temporary file has a unique name made with O_EXCL, and the victim is untouched."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)
    (run_dir / "results.csv.tmp").symlink_to(victim)
    write_atomic(run_dir / "results.csv", "a,b\n")
    assert victim.read_text() == "precious"
    assert (run_dir / "results.csv").read_text() == "a,b\n"


# ----------------------------------------------------------------- directories made by someone else
def test_a_symlinked_run_directory_is_refused(tmp_path):
    """A run directory that is a symbolic link (to a victim's folder) is refused before anything is written."""
    (tmp_path / "elsewhere").mkdir(mode=0o755)
    (tmp_path / "run").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="symbolic link"):
        run(tmp_path / "run")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_run_directory_others_can_write_is_refused(tmp_path):
    """A run directory writable by group or others (mode & 0o022) is refused, naming its mode."""
    d = tmp_path / "run"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(InputError, match="writable by others .mode 777"):
        run(d)
    assert list(d.iterdir()) == []


def test_a_run_directory_of_another_user_is_refused(tmp_path, monkeypatch):
    """A run directory owned by another user id is refused (the process plays another user here)."""
    d = tmp_path / "run"
    d.mkdir(mode=0o755)
    owner = d.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    with pytest.raises(InputError, match=f"belongs to user id {owner}"):
        RunStore(d).check_config({"config": {}, "plan": {}})


@pytest.mark.parametrize("name", ["units.jsonl", "units", "config.json", "results.csv"])
def test_a_planted_symlink_in_the_run_directory_is_refused(tmp_path, name):
    """A symbolic link in place of a file the sweep reads or writes is refused and its target is untouched
    (before, results were written through it and units appended to it)."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    d = tmp_path / "run"
    d.mkdir(mode=0o755)
    (d / name).symlink_to(victim)
    with pytest.raises(InputError, match="symbolic link"):
        run(d)
    assert victim.read_text() == "precious"


# ----------------------------------------------------------------- tampered files
@pytest.fixture
def finished(tmp_path):
    run(tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("text, match", [
    ('{\n "config": {\n  oops', r"config.json' line 3 is not valid JSON"),
    ("[1, 2]", "a JSON list, not a sweep record"),
    ('{"config": 5, "plan": {}}', "field 'config' is 5, not an object"),
    (b'\xff\xfe', "cannot read"),
])
def test_a_tampered_config_json_is_an_input_error(finished, text, match):
    """A config.json that is not a sweep record gives an InputError naming the file (and line), not a raw
    AttributeError or UnicodeDecodeError."""
    path = finished / "config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError, match=match):
        run(finished)


@pytest.mark.parametrize("record, match", [
    ('{"method": "gradcam", "layer": "3", "metric": "deletion", "image": "im0", "values": [["all", "x", null, "hi"]]}',
     "line 2 .*has value \"hi\", not a number"),
    ('{"method": "gradcam", "layer": "3", "metric": "deletion", "image": "im0", "values": [1]}',
     "line 2 .*value 1 is not \\[subset, measure, class, value\\]"),
    ('{"method": "gradcam", "layer": "3", "metric": "deletion", "image": "im0", "values": {"a": 1}}',
     "line 2 .*'values' is \\{\"a\": 1\\}, not a list"),
    ('{"method": 7, "layer": "3", "metric": "deletion", "image": "im0", "values": {}}',
     "line 2 .*'method' is 7, not a string"),
    ('"just a string"', "line 2 .*a JSON str, not an object"),
])
def test_a_tampered_units_jsonl_is_an_input_error(finished, record, match):
    """A line of the wrong shape in the ``units.jsonl`` of an earlier version gives an InputError naming the file
    and the line (before: a raw ValueError or AttributeError from float() or .items())."""
    lines = [x + "\n" for x in unit_lines(finished)]
    (finished / "units.jsonl").write_text(lines[0] + record + "\n" + "".join(lines[1:]))
    with pytest.raises(InputError, match=match):
        run(finished)


# ----------------------------------------------------------------- folder data
def _png(path, seed=0, size=32):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path, format="PNG")


def _folder(tmp_path):
    root = tmp_path / "data"
    (root / "cat").mkdir(parents=True)
    _png(root / "cat" / "a.png")
    return root


def test_a_fifo_in_folder_data_is_refused_before_anything_is_opened(tmp_path):
    """A FIFO named like an image would block the sweep forever on open; it is refused, named, up front."""
    from extagg.evaluation.datasets import ImageFolderSamples

    root = _folder(tmp_path)
    os.mkfifo(root / "cat" / "b.png")
    with pytest.raises(InputError, match="b.png' is not a regular file"):
        ImageFolderSamples(root)


@pytest.mark.parametrize("what", ["file", "class folder"])
def test_a_symlink_out_of_the_root_is_refused(tmp_path, what):
    """An image (or a class folder) that is a symbolic link to a place outside --root is refused."""
    from extagg.evaluation.datasets import ImageFolderSamples

    root = _folder(tmp_path)
    outside = tmp_path / "secret"
    outside.mkdir()
    _png(outside / "s.png", seed=1)
    if what == "file":
        (root / "cat" / "s.png").symlink_to(outside / "s.png")
    else:
        (root / "dog").symlink_to(outside)
    with pytest.raises(InputError, match="outside the data root"):
        ImageFolderSamples(root)


def test_a_symlink_inside_the_root_is_followed(tmp_path):
    """The refusal is about leaving the root: a link to another image inside it is read."""
    from extagg.evaluation.datasets import ImageFolderSamples

    root = _folder(tmp_path)
    (root / "cat" / "b.png").symlink_to(root / "cat" / "a.png")
    assert [s.image_id for s in ImageFolderSamples(root)] == ["a", "b"]


def test_a_non_utf8_file_name_gives_a_run_that_finishes(tmp_path):
    """An image file whose name is not UTF-8 gets an id with its bytes escaped (``caf\\xe9``): the sweep writes
    its tables and resumes (before, writing the UTF-8 tables failed after every unit was computed, on every
    resume)."""
    root = _folder(tmp_path)
    name = os.fsdecode(b"caf\xe9.png")
    _png(root / "cat" / name, seed=2)
    config = small(tmp_path / "run", data="folder", root=str(root))
    first = sweep(config, model=tiny_model(), out=io.StringIO())
    assert sorted({r.image for r in first.per_image}) == ["a", "caf\\xe9"]
    assert "caf\\xe9" in (tmp_path / "run" / "per_image.csv").read_text(encoding="utf-8")
    again = sweep(config, model=tiny_model(), out=io.StringIO())
    assert again.rows == first.rows


# ----------------------------------------------------------------- provenance
def test_the_fingerprint_sees_every_parameter_and_buffer():
    """Equal weights give equal fingerprints on a copy; one changed parameter value, one buffer value or a
    dtype give another."""
    a = tiny_model()
    assert model_fingerprint(a) == model_fingerprint(tiny_model())
    b = tiny_model()
    with torch.no_grad():
        b[0].weight[0, 0, 0, 0] += 1e-6
    c = tiny_model()
    c[1].running_mean[2] += 1e-6
    assert len({model_fingerprint(m) for m in (a, b, c, tiny_model().double())}) == 4


def test_preprocessing_is_described_without_addresses():
    """The description is stable across processes: a class's own repr or a function's qualified name."""
    from extagg.preprocessing import preprocessing_for

    assert "mean=" in describe_preprocess(preprocessing_for("efficientnet-lite0"))
    assert describe_preprocess(_png) == f"{__name__}._png"
    assert " at 0x" not in describe_preprocess(object())


def test_resuming_with_other_weights_under_the_same_name_is_refused(tmp_path):
    """config.json records the model's fingerprint and preprocessing; a resume with a different model of the
    same name is refused naming both fingerprints (before, it was accepted and mixed the numbers)."""
    run(tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())["model"]
    assert record == {"fingerprint": model_fingerprint(tiny_model()), "preprocess": None}
    other = tiny_model()
    with torch.no_grad():
        other[-1].bias[0] += 0.5
    with pytest.raises(InputError, match="model weights") as info:
        run(tmp_path, model=other)
    assert record["fingerprint"] in str(info.value) and model_fingerprint(other) in str(info.value)
    with pytest.raises(InputError, match="preprocessing: null, now .*_identity"):
        sweep(small(tmp_path), model=tiny_model(), preprocess=_identity, samples=tiny_samples(2), out=io.StringIO())


def _identity(x):
    return x


def test_first_difference_names_the_field():
    assert first_difference({"config": {"a": 1, "steps": 3}}, {"config": {"a": 1, "steps": 4}}) == \
        ("config.steps", 3, 4)
    assert first_difference({"x": [1]}, {"x": [1]}) is None


# ----------------------------------------------------------------- the caller's random state
def test_the_callers_random_state_is_left_as_it_was(tmp_path):
    """sweep() seeds torch for its own numbers (and the randomisation test reseeds it) but puts the caller's
    torch, Python and NumPy random states back."""
    import numpy as np

    model, samples = tiny_model(), tiny_samples(2)  # (building a model draws from the global generator)
    torch.manual_seed(1234)
    random.seed(5)
    np.random.seed(6)
    state, py, npy = torch.random.get_rng_state(), random.getstate(), np.random.get_state()
    sweep(small(tmp_path, metrics=("deletion", "randomisation")), model=model, samples=samples, out=io.StringIO())
    assert torch.equal(torch.random.get_rng_state(), state)
    assert random.getstate() == py
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state(), npy))


def test_a_run_recorded_without_a_fingerprint_resumes_with_a_warning(finished):
    """Run directories written before the fingerprint existed still resume; the unchecked model is announced."""
    path = finished / "config.json"
    record = json.loads(path.read_text())
    del record["model"]
    path.write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="records no model fingerprint"):
        run(finished)


def test_ranks_are_dealt_whole_batches_of_the_plan():
    """Rank k of w computes batches k, k + w, ...; every rank goes through the same number of rounds."""
    from extagg.sweep.distributed import Group

    batches = [(0, 1), (2, 3), (4,)]
    assert list(Group(0, 2).rounds(batches)) == [(0, (0, 1)), (2, (4,))]
    assert list(Group(1, 2).rounds(batches)) == [(0, (2, 3)), (2, None)]
