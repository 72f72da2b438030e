"""`python -m workbench ...` is the same as `kdw ...`.

`worker` never imports torch: it only takes the queue lock, reads the run store and starts job
processes. A burst of submits thus costs one small process, and a worker that finds the queue taken
exits within milliseconds.
"""

import os
import sys


def _worker(argv: list[str]) -> int:
    from workbench.jobs.queue import worker_loop
    from workbench.store.runs import RunStore

    root = os.environ.get("KDW_RUNS_DIR") or None
    if "--runs-dir" in argv[:-1]:
        root = argv[argv.index("--runs-dir") + 1]
    slot = int(argv[argv.index("--slot") + 1]) if "--slot" in argv[:-1] else 0
    worker_loop(RunStore(root), slot=slot)
    return 0


if sys.argv[1:2] == ["worker"]:
    sys.exit(_worker(sys.argv[2:]))

from workbench.cli.main import main  # noqa: E402

sys.exit(main())
