"""A sweep holds one batch at a time: what it keeps alive between batches does not grow with the images.

Peak RSS is the wrong gate for a unit test (identical runs' peaks vary by tens of MiB with the allocator), so this
counts what a leak would be made of: the bytes of every tensor Python can reach (``gc``; views counted once per
storage) at each batch's commit, the moment a batch is finished and the next not started. Between the 8-image
and the 128-image sweep they must be the same but for the caller's own input images. The counter-case keeps
every batch's randomisation references alive, as a regression that held statistics across batches would, and
the count sees it (the test can fail). Tensors held only by C++ (an autograd graph) are not counted; the
benchmark ``benchmarks/bench_sweep_memory.py`` measures the process's peak RSS at 8, 32 and 128 images.
"""
from __future__ import annotations

import gc

import torch
from sweep_fixtures import tiny_config, tiny_model, tiny_samples

from extagg.sweep import sweep
from extagg.sweep.store import RunStore


def live_tensor_bytes() -> int:
    gc.collect()
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor) and not obj.is_meta:
            try:
                storage = obj.untyped_storage()
            except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, wrappers)
                continue
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def kept_between_batches(tmp_path, monkeypatch, n: int, leak: bool = False) -> list[int]:
    """Live tensor bytes at each commit of a sweep of ``n`` images (4 per batch), less the input images."""
    samples = tiny_samples(n, size=48)
    inputs = sum(s.image.untyped_storage().nbytes() for s in samples)
    counts: list[int] = []
    commit = RunStore.commit

    def counting(self, *a, **k):
        out = commit(self, *a, **k)
        counts.append(live_tensor_bytes() - inputs)
        return out

    monkeypatch.setattr(RunStore, "commit", counting)
    if leak:  # keep every batch's randomisation references alive, as a regression would
        import extagg_builtins.metrics as metrics

        kept, original = [], metrics.similarity_reference

        def keeping(*a, **k):
            kept.append(original(*a, **k))
            return kept[-1]

        monkeypatch.setattr(metrics, "similarity_reference", keeping)
    config = tiny_config(tmp_path / f"run{n}{leak}", methods=("gradcam", "normgrad", "linear-approx"), batch_size=4,
                         metrics=("sensitivity", "randomisation(checkpoints=1)", "deletion"), combine=(),
                         save_maps="none", workers=0)
    with open(tmp_path / "out.txt", "w") as out:
        sweep(config, model=tiny_model(), samples=samples, out=out)
    return counts


def test_what_a_sweep_keeps_between_batches_is_flat_in_images(tmp_path, monkeypatch, one_thread):
    few = kept_between_batches(tmp_path, monkeypatch, 8)
    many = kept_between_batches(tmp_path, monkeypatch, 128)
    assert len(few) >= 2 and len(many) >= 32, (few, many)  # a commit per batch (or round of batches)
    # from the second batch on, the same bytes whatever the number of batches before
    assert max(many[1:]) - min(few[1:]) < 64 * 1024, (few, many)
    leaky = kept_between_batches(tmp_path, monkeypatch, 32, leak=True)
    # counter-case: each batch's randomisation references (9 maps x 4 images x 48 x 48 px, with their HOG and
    # SSIM inputs: about 1.3 MiB) kept, 8 batches
    assert leaky[-1] - leaky[1] > 4 * 2 ** 20, leaky
