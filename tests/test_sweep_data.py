"""The sweep's data at scale: images decoded lazily by DataLoader workers in the plan's order, ids known without
decoding, ``--limit`` / seeded ``--sample`` selections recorded in the configuration."""
from __future__ import annotations

import io

import pytest
import torch
from strategies_evaluation import write_coco, write_voc

from extagg.cli import build_parser
from extagg.errors import InputError
from extagg.sweep import SweepConfig, sweep
from extagg.sweep.cli import config_from_args
from extagg.sweep.data import ImageSource, batches, load_samples, select
from sweep_fixtures import tiny_config, tiny_model


def _folder(root, n=7, vary=True):
    """``n`` PNGs (of different sizes if ``vary``) in two class folders (file names not in class order)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for i in range(n):
        folder = root / ("b" if i % 2 else "a")
        folder.mkdir(parents=True, exist_ok=True)
        side = 20 + i if vary else 24
        pixels = (torch.rand(side, side + 1, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{6 - i}.png")
    return root


def _voc(root):
    write_voc(root, {f"00000{i}": (24 + i, 30, [("dog", 2, 3, 10, 12, 0)]) for i in range(1, 6)})
    return root


def _coco(root):
    images = [{"id": 10 - i, "file_name": f"pic{i}.png", "height": 20 + i, "width": 24} for i in range(5)]
    annotations = [{"id": i, "image_id": 10 - i, "category_id": 3, "iscrowd": 0,
                    "segmentation": [[1, 1, 10, 1, 10, 10, 1, 10]]} for i in range(5)]
    write_coco(root, images, annotations, [{"id": 3, "name": "cat"}])
    return root


def _source(kind, tmp_path, **kw):
    root = {"folder": _folder, "voc": _voc, "coco": _coco}[kind](tmp_path / kind)
    return load_samples(SweepConfig(data=kind, root=str(root), **kw))


@pytest.mark.parametrize("kind", ["folder", "voc", "coco"])
def test_workers_decode_the_same_images_in_the_plans_order(tmp_path, kind):
    """Two DataLoader workers hand out each batch of the given order (not the order they finish in), with the
    images and ids that decoding in this process gives; the ids are known before decoding and are those of the
    decoded samples (folder: file stem in ImageFolder order; VOC: the image set's ids; COCO: by image id)."""
    source = _source(kind, tmp_path)
    assert isinstance(source, ImageSource) and len(source) == (7 if kind == "folder" else 5)
    expected = {"folder": ["img0", "img2", "img4", "img6", "img1", "img3", "img5"],
                "voc": [f"00000{i}" for i in range(1, 6)], "coco": [f"pic{i}" for i in (4, 3, 2, 1, 0)]}[kind]
    assert source.ids == expected
    order = [(3, 4), (0, 1), (len(source) - 1,), (2,)]
    inline = list(batches(source, order, workers=0))
    parallel = list(batches(source, order, workers=2))
    assert [[s.image_id for s in b] for b in parallel] == [[source.ids[i] for i in b] for b in order]
    assert [[s.image_id for s in b] for b in inline] == [[source.ids[i] for i in b] for b in order]
    for a, b in zip(inline, parallel):
        for x, y in zip(a, b):
            assert torch.equal(x.image, y.image) and x.classes == y.classes
            assert (x.masks is None and y.masks is None) or torch.equal(x.masks, y.masks)


def test_the_sample_is_drawn_with_the_seed_and_stays_the_same():
    """``select``: first ``limit``, then ``sample`` of them drawn by a seeded generator, in increasing order; the
    same seed gives the same images (pinned: a change of the draw would silently change what a documented
    command computes), another seed others."""
    assert select(20, sample=5, seed=0) == select(20, sample=5, seed=0) == [4, 5, 7, 13, 19]
    assert select(20, sample=5, seed=1) != select(20, sample=5, seed=0)
    assert select(20, limit=8) == list(range(8))
    drawn = select(20, limit=8, sample=3, seed=0)
    assert len(drawn) == 3 and drawn == sorted(drawn) and set(drawn) <= set(range(8))
    assert select(4, sample=10) == [0, 1, 2, 3]


def test_a_sample_from_disk_names_the_drawn_images(tmp_path):
    """``--sample`` on a folder: the drawn images' ids, in the data set's order."""
    full = _source("folder", tmp_path)
    part = load_samples(SweepConfig(data="folder", root=str(tmp_path / "folder"), sample=3, seed=5))
    assert part.ids == [full.ids[i] for i in select(7, sample=3, seed=5)]


def test_a_resume_with_another_sample_or_limit_is_refused(tmp_path):
    """``sample`` and ``limit`` change which images are computed: both are recorded, and a resume that changes
    either is refused naming the field; ``workers`` changes no number and may differ."""
    root = _folder(tmp_path / "data", vary=False)
    base = dict(data="folder", root=str(root), methods=("gradcam",), layers=("3",), metrics=("deletion",),
                combine=(), randomise=("7",))

    def run(**kw):
        cfg = tiny_config(tmp_path / "run", **{**base, **kw})
        return sweep(cfg, model=tiny_model(), out=io.StringIO())

    first = run(sample=3, workers=0)
    assert list(first.plan.image_ids) == load_samples(SweepConfig(data="folder", root=str(root), sample=3)).ids
    with pytest.raises(InputError, match="different config: sample was 3, now 4"):
        run(sample=4)
    with pytest.raises(InputError, match="different config: limit was null, now 5"):
        run(sample=3, limit=5)
    again = run(sample=3, workers=2)
    assert again.rows == first.rows


def test_workers_do_not_change_a_number(tmp_path):
    """A folder sweep decoded by two workers writes the same tables, byte for byte, as one decoding in the main
    process."""
    root = _folder(tmp_path / "data", n=5, vary=False)
    out = {}
    for workers in (0, 2):
        d = tmp_path / f"w{workers}"
        cfg = tiny_config(d, data="folder", root=str(root), methods=("gradcam", "normgrad"), layers=("3",),
                          metrics=("deletion", "sensitivity"), workers=workers)
        sweep(cfg, model=tiny_model(), out=io.StringIO())
        out[workers] = {n: (d / n).read_bytes() for n in ("results.csv", "per_image.csv")}
    assert out[0] == out[2]


def test_sample_and_workers_options():
    args = build_parser().parse_args(["sweep", "--sample", "50", "--workers", "0", "--limit", "100"])
    cfg = config_from_args(args)
    assert (cfg.sample, cfg.workers, cfg.limit) == (50, 0, 100)
    assert "sample" in cfg.result_dict() and "workers" not in cfg.result_dict()
    with pytest.raises(InputError, match="sample must be an integer >= 1"):
        SweepConfig(sample=0)
    with pytest.raises(InputError, match="workers must be an integer >= 0"):
        SweepConfig(workers=-1)
