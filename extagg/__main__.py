import os
import sys

from .cli import main

rc = main()
if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
    # A rank of a distributed sweep (torchrun -m extagg sweep) has written and closed everything: leave without the
    # interpreter's teardown, where gloo's threads can abort the process after its work is done and hide the status.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
sys.exit(rc)
