"""Bounds on what users and data hand to extagg: hostile annotation files, decompression-bomb images, binary flags
files, seeds, devices, ``eval_mode``, NumPy targets and a compiler that hangs. Each is refused (or accepted) with an
extagg error naming the file or the value and what would be accepted, never a raw RecursionError / ValueError /
RuntimeError, and never after a long wait."""
from __future__ import annotations

import json
import os
import stat
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from strategies_evaluation import tiny_cnn, write_coco, write_voc

import extagg
from extagg import models, native
from extagg.errors import InputError
from extagg.evaluation import COCOPointing, VOCPointing, read_difficult_flags
from extagg.sweep.config import SweepConfig


# ----------------------------------------------------------------------------- annotation files
@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "data"
    write_voc(root, {"000001": (20, 30, [("dog", 2, 3, 5, 4, 0)])})
    return root, root / "VOCdevkit" / "VOC2007" / "Annotations" / "000001.xml"


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "coco"
    write_coco(root, [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
               [{"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]}],
               [{"id": 1, "name": "dog"}])
    return root, root / "annotations" / "instances_val2014.json"


def test_deeply_nested_voc_xml_names_the_file(voc):
    """Guards against a RecursionError from XML nested 5,000 deep (the reader walked the tree recursively)."""
    root, xml = voc
    text = xml.read_text()
    xml.write_text(text.replace("<segmented>0</segmented>", "<x>" * 5000 + "0" + "</x>" * 5000))
    with pytest.raises(InputError, match=r"000001\.xml: XML elements nested more than 64 deep"):
        VOCPointing(root)[0]


def test_deeply_nested_coco_json_names_the_file(coco):
    """Guards against the RecursionError json raises on arrays nested 100,000 deep."""
    root, path = coco
    path.write_text('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(InputError, match=r"instances_val2014\.json: JSON nested too deeply"):
        COCOPointing(root)


@pytest.mark.parametrize("record, index, field", [("images", 0, "id"), ("annotations", 0, "image_id"),
                                                  ("categories", 0, "id")])
def test_a_10000_digit_coco_number_names_the_file_and_field(coco, record, index, field):
    """Guards against the raw ValueError of Python's int() digit limit while the JSON is parsed: the number is
    refused where the field is read, naming the file, the record and the field."""
    root, path = coco
    data = json.loads(path.read_text())
    data[record][index][field] = 0  # placeholder replaced by the long number below
    text = json.dumps(data).replace(f'"{field}": 0', f'"{field}": ' + "7" * 10_000, 1)
    path.write_text(text)
    with pytest.raises(InputError, match=rf"instances_val2014\.json: {record}\[0\]: field '{field}': a number of "
                                         r"10000 digits"):
        COCOPointing(root)[0]


def test_a_10000_digit_coco_coordinate_is_named(coco):
    """A long number inside a polygon is refused by the segmentation check (named), not by the JSON parser."""
    root, path = coco
    path.write_text(path.read_text().replace("[[0, 0, 4, 0", "[[0, " + "9" * 10_000 + ", 4, 0", 1))
    with pytest.raises(InputError, match=r"annotations\[0\]: field 'segmentation': .*10000-digit number"):
        COCOPointing(root)[0]


def test_a_10000_digit_voc_coordinate_names_the_field(voc):
    root, xml = voc
    xml.write_text(xml.read_text().replace("<xmin>2</xmin>", "<xmin>" + "9" * 10_000 + "</xmin>"))
    with pytest.raises(InputError, match=r"000001\.xml: .*field 'bndbox\.xmin'"):
        VOCPointing(root)[0]


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG file whose header declares ``width`` x ``height`` RGB pixels (its data is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [100_000, 9_000])  # past Pillow's own limit; past extagg's, under Pillow's
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, side):
    """Guards against a raw DecompressionBombError (100k x 100k) or a 9000 x 9000 decode (81 M pixels, ~1 GB as
    floats): the header's size is checked against extagg.models.MAX_IMAGE_PIXELS before any pixel is decoded."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(side, side))
    with pytest.raises(InputError, match=r"bomb\.png' was not decoded: .*at most 67,108,864 pixels "
                                         r"\(extagg\.models\.MAX_IMAGE_PIXELS\)"):
        models.load_image(path)


def test_the_pixel_limit_is_the_documented_setting(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    from PIL import Image

    Image.new("RGB", (30, 20)).save(path)
    assert models.load_image(path).shape == (3, 20, 30)
    monkeypatch.setattr(models, "MAX_IMAGE_PIXELS", 599)
    with pytest.raises(InputError, match=r"declares 30 x 20 = 600 pixels; extagg decodes at most 599"):
        models.load_image(path)


def test_a_bomb_in_a_coco_root_names_the_file(coco):
    root, path = coco
    (root / "val2014" / "a.png").write_bytes(png_header(100_000, 100_000))
    with pytest.raises(InputError, match=r"a\.png' was not decoded"):
        COCOPointing(root)[0]


def test_a_binary_difficult_flags_file_names_the_file(tmp_path):
    """Guards against the raw UnicodeDecodeError of a binary file given as TorchRay's flags file."""
    path = tmp_path / "flags.txt"
    path.write_bytes(b"000001\t0\t1\n\xff\xfe\x00\x9c binary")
    with pytest.raises(InputError, match=r"flags\.txt: not a text file of difficult flags \(not UTF-8"):
        read_difficult_flags(path, 2)


# ----------------------------------------------------------------------------- seed and device
@pytest.mark.parametrize("seed", [-1, 2 ** 63, "1", 1.5, True, None])
def test_a_bad_sweep_seed_is_named(seed):
    """Guards against a seed the sweep accepted and torch.manual_seed then refused (or took as another number)."""
    with pytest.raises(InputError, match=r"seed must be a whole number in 0\.\.2\*\*63-1 = 9223372036854775807, "
                                         rf"got {str(seed)!r}"):
        SweepConfig(seed=seed)


@pytest.mark.parametrize("seed", [0, 7, 2 ** 63 - 1, np.int64(3)])
def test_valid_seeds_are_kept(seed):
    config = SweepConfig(seed=seed)
    assert config.seed == seed
    torch.Generator().manual_seed(int(config.seed))  # every accepted seed is one torch takes


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:-1", " cpu", "CPU", "", 0])
def test_a_bad_sweep_device_is_named(device):
    """Guards against the raw RuntimeError torch.device raised only when the sweep began."""
    with pytest.raises(InputError, match=r"device .*must be a torch device string such as 'cpu', 'cuda', 'cuda:0'"
                                         rf".*got {str(device)!r}"):
        SweepConfig(device=device)


@pytest.mark.parametrize("device", [None, "cpu", "cuda", "cuda:0", "mps"])
def test_valid_devices_are_kept(device):
    assert SweepConfig(device=device).device == device
    assert SweepConfig.from_dict(SweepConfig(device=device).to_dict()).device == device


# ----------------------------------------------------------------------------- eval_mode and NumPy targets
@pytest.fixture
def net():
    return tiny_cnn(5), torch.randn(2, 3, 8, 8, dtype=torch.float64)


@pytest.mark.parametrize("value", ["no", "False", 0, 1, None])
def test_eval_mode_must_be_a_bool(net, value):
    """Guards against eval_mode='no' being taken as true (any non-empty string was)."""
    model, x = net
    model.train()
    with pytest.raises(InputError, match=rf"eval_mode must be True .* or False .*got \w+ {str(value)!r}"):
        extagg.saliency(model, x, "gradient", eval_mode=value)
    with pytest.raises(InputError, match="eval_mode must be True"):
        extagg.saliency_per_example(model, x, "gradient", eval_mode=value)
    assert model.training  # refused before anything ran


@pytest.mark.parametrize("given, same", [
    (np.int64(3), 3), (np.int32(1), 1), (np.uint8(4), 4), (np.array(2), 2),
    (np.array([1, 4]), [1, 4]), (np.array([[0, 1], [2, 3]], dtype=np.int16), torch.tensor([[0, 1], [2, 3]])),
    ([np.int64(2), np.int64(0)], [2, 0]),
])
def test_numpy_integer_targets_are_taken_as_ints(net, given, same):
    """Guards against np.int64(3) and 0-d arrays being refused as 'not an int'."""
    model, x = net
    got = extagg.saliency(model, x, "gradient", targets=given)
    want = extagg.saliency(model, x, "gradient", targets=same)
    assert torch.equal(got.targets, want.targets)
    torch.testing.assert_close(got["gradient", "input"], want["gradient", "input"], rtol=0, atol=0)


@pytest.mark.parametrize("given", [np.float64(3.0), np.array([1.0, 2.0]), np.bool_(True), np.array([True, False]),
                                   np.array([2 ** 63, 1], dtype=np.uint64), np.array(["1", "2"])])
def test_numpy_floats_and_bools_are_still_refused(net, given):
    model, x = net
    with pytest.raises(InputError, match="target"):
        extagg.saliency(model, x, "gradient", targets=given)


# ----------------------------------------------------------------------------- a hanging compiler
needs_posix = pytest.mark.skipif(not hasattr(os, "killpg"), reason="a fake compiler script needs POSIX")


@pytest.fixture
def hanging_cc(tmp_path, monkeypatch):
    """A fresh, unloaded kernel state, a temporary cache, and ``$CC`` a script that (for ``--version`` only when
    ``HANG_VERSION`` is set) starts ``sleep 60`` and waits for it, logging its calls and the sleeper's pid."""
    log = tmp_path / "calls.log"
    script = tmp_path / "fake-cc"
    script.write_text(f"""#!/bin/sh
echo "$1" >> "{log}"
if [ "$1" = "--version" ] && [ -z "$HANG_VERSION" ]; then echo "fake cc 1.0"; exit 0; fi
sleep 60 &
echo $! > "{tmp_path / 'sleeper.pid'}"
wait
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(native, "_state", {"lib": None, "tried": False, "on": True})
    monkeypatch.setenv("EXTAGG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(script))
    monkeypatch.setattr(native, "COMPILE_TIMEOUT", 0.5)
    return tmp_path, log


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (exited or a zombie), polled for up to 5 s after the kill."""
    for _ in range(50):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


@needs_posix
@pytest.mark.parametrize("hang_version", [True, False])
def test_a_hanging_compiler_falls_back_with_one_warning(hanging_cc, monkeypatch, hang_version):
    """Guards against a hanging ``$CC`` blocking the first call (60 s for ``--version``, 300 s for each of four
    builds): one run of the compiler is stopped after COMPILE_TIMEOUT, with the processes it started, no other
    flag set is tried, and the PyTorch path is used with one warning."""
    folder, log = hanging_cc
    if hang_version:
        monkeypatch.setenv("HANG_VERSION", "1")
    g = torch.randn(1, 1, 3, 5, 5, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=r"native kernels unavailable \(the C compiler did not finish within "
                                            r"0\.5 s .*COMPILE_TIMEOUT\)\); using the PyTorch path"):
        assert native.side_stats(g, g.shape, 2, ["sum"]) is None
    calls = log.read_text().split()
    assert calls == (["--version"] if hang_version else ["--version", calls[1]])  # one build, not four
    assert _gone(int((folder / "sleeper.pid").read_text()))  # the compiler's children were stopped too
    assert not list((folder / "cache").glob("*.so*"))  # nothing half-written left behind
    assert not native.available()  # tried once per process: no second wait, no second warning


@pytest.mark.parametrize("seed", [-1, 2 ** 64, "x"])
def test_a_bad_evaluate_seed_is_named(seed):
    """Guards against a seed evaluate() passed on to a metric, whose generator then raised a raw error (or, for -1,
    silently took another number)."""
    from extagg.evaluation import Sample, evaluate

    data = [Sample(torch.rand(3, 8, 8, dtype=torch.float64), "a", (1,))]
    with pytest.raises(InputError, match=rf"seed must be a whole number in 0\.\.2\*\*63-1 .*got {str(seed)!r}"):
        evaluate(tiny_cnn(5), data, ["gradient"], "input", ["randomisation"], seed=seed)
