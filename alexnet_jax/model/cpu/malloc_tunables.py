"""malloc that keeps what it frees, for XLA:CPU's arrays: the entry points restart with it.

XLA:CPU keeps its arrays in memory from glibc's ``malloc``.  By default glibc maps every
block over 32 MiB afresh and unmaps it when freed, so each step's big arrays (a gradient,
the step's scratch; fc6's alone is 151 MB) come back as new pages that the kernel faults
in and zeroes, every step (docs/performance.md).  These tunables keep freed memory
instead: one arena (``arena_max=1``), grown and never unmapped (``mmap_max=0``) or
trimmed (``trim_threshold``), whose blocks the next step reuses.  A process's footprint
is then its peak.  glibc reads tunables only at start-up, so ``python -m
alexnet_jax.main`` and ``python -m alexnet_jax.benchmark`` restart themselves with them
(``cpu.prepare_process``).  The benchmark's peers keep the environment they were given.
"""
from __future__ import annotations

import os
import sys

MALLOC_TUNABLES = {"glibc.malloc.arena_max": "1", "glibc.malloc.mmap_max": "0",
                   "glibc.malloc.trim_threshold": str(1 << 40)}
# In GLIBC_TUNABLES, this one marks a process that has them, or whose user chose its own.
MARKER = "glibc.malloc.mmap_max"


def restart_with_malloc_tunables() -> None:
    """Replaces this process (same pid, same command line) by one whose malloc keeps what
    it frees (``MALLOC_TUNABLES``, each unless ``GLIBC_TUNABLES`` already sets it).  Does
    nothing where ``GLIBC_TUNABLES`` sets ``MARKER``, off Linux, or with
    ``ALEXNET_JAX_MALLOC_TUNABLES=0``.  Call it before anything else starts."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (sys.platform != "linux" or os.environ.get("ALEXNET_JAX_MALLOC_TUNABLES") == "0"
            or MARKER in tunables):
        return
    given = {setting.split("=")[0] for setting in tunables.split(":")}
    ours = [f"{key}={value}" for key, value in MALLOC_TUNABLES.items() if key not in given]
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, (tunables, *ours))))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
