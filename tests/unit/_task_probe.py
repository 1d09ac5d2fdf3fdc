"""A ``python -m`` step for tests/unit/test_skill_jobs.py: says whether torch was imported before
it ran (forked from a preloaded server), its arguments, thread counts and working directory, then
leaves with the exit code of its last argument through an exit handler."""

import atexit
import os
import sys

preloaded = "torch" in sys.modules
import torch  # noqa: E402

atexit.register(print, "exit handler ran", flush=True)
print("preloaded", preloaded, *sys.argv[1:-1], flush=True)
print("threads", os.environ["OMP_NUM_THREADS"], torch.get_num_threads(), "cwd", os.getcwd())
print("to stderr", file=sys.stderr, flush=True)
sys.exit(int(sys.argv[-1]))
