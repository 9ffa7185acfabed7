"""A sweep in a process of its own, for the multi-process tests: ``python sweep_worker.py RUN_DIR STEPS IMAGES
[--go FILE] [--stall]``. The rank comes from the environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) as
torchrun sets it. ``--go FILE``: stop where the run directory is checked, create ``FILE.ready.<pid>`` and spin
until FILE exists, so that several processes reach the run directory at the same instant.
``--stall``: join the process group, then do nothing (a rank that hangs). ``--slow SECONDS``: sleep that long
after each metric of a batch (so that a test can kill the process between commits). An extagg error is printed on stderr as
``ERROR <type>: <message>`` and the exit status is 3."""
from __future__ import annotations

import io
import os
import sys
import time


def main(argv: list[str]) -> int:
    import torch

    from extagg.errors import ExtaggError
    from extagg.sweep import sweep
    from extagg.sweep.distributed import Group
    from sweep_fixtures import tiny_config, tiny_model, tiny_samples

    run_dir, steps, images = argv[0], int(argv[1]), int(argv[2])
    torch.set_num_threads(1)
    if "--stall" in argv:
        Group.from_env("cpu")
        time.sleep(600)
        return 0
    if "--go" in argv:
        from extagg.sweep.store import RunStore

        go, check = argv[argv.index("--go") + 1], RunStore.check_config

        def together(self, *args, **kw):
            open(f"{go}.ready.{os.getpid()}", "w").close()
            while not os.path.exists(go):  # spin: released within microseconds of each other
                pass
            return check(self, *args, **kw)

        RunStore.check_config = together
    if "--slow" in argv:
        from extagg.sweep.compute import BatchRunner

        pause, real = float(argv[argv.index("--slow") + 1]), BatchRunner.run

        def slow(self, *args, **kw):
            for item in real(self, *args, **kw):
                time.sleep(pause)
                yield item

        BatchRunner.run = slow
    config = tiny_config(run_dir, methods=("gradcam",), layers=("3",), metrics=("deletion",), steps=steps,
                         device="cpu")
    try:
        sweep(config, model=tiny_model(), samples=tiny_samples(images), out=io.StringIO())
    except ExtaggError as exc:
        print(f"ERROR {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    status = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # as python -m extagg under torchrun: no interpreter teardown after the work is done
