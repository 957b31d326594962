"""Huge pages, kept, for XLA:CPU's arrays: the command-line entry points restart with them.

XLA:CPU keeps its arrays in memory from glibc's ``malloc``, on 4 KiB pages unless told
otherwise, and writing the big ones (fc6's weights and gradient) is then markedly slower
(docs/performance.md).  glibc (2.35 and later) asks the kernel for transparent huge pages
when started with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``.  By default it also maps
every block over 32 MiB afresh and unmaps it when freed, so each step's big arrays (a
gradient, the step's scratch) come back as new pages, which the kernel zeroes and, now
and then, compacts memory to find huge ones for: a step in four took half as long again.
So the restart also keeps freed memory: one arena (``arena_max=1``), grown and never
unmapped (``mmap_max=0``) or trimmed (``trim_threshold``), whose blocks the next step
reuses.  A process's footprint is then its peak.  glibc reads these only at start-up, so
``python -m alexnet_jax.main`` and ``python -m alexnet_jax.benchmark`` restart themselves
with them.  The benchmark's peers keep the environment they were given.
"""
from __future__ import annotations

import os
import sys

# The first says that the process has them (or that the user chose otherwise).
MALLOC_TUNABLES = {"glibc.malloc.hugetlb": "1", "glibc.malloc.arena_max": "1",
                   "glibc.malloc.mmap_max": "0", "glibc.malloc.trim_threshold": str(1 << 40)}
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def transparent_huge_pages_available() -> bool:
    """Whether the kernel gives huge pages to memory that asks for them (madvise or always)."""
    try:
        with open(THP_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def restart_with_huge_pages() -> None:
    """Replaces this process (same pid, same command line) by one whose malloc uses huge
    pages and keeps what it frees (``MALLOC_TUNABLES``, each unless ``GLIBC_TUNABLES``
    already sets it).  Does nothing where the process has them, off Linux, without
    transparent huge pages, or with ``ALEXNET_JAX_HUGE_PAGES=0``.  Call it before anything
    else starts."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (sys.platform != "linux" or os.environ.get("ALEXNET_JAX_HUGE_PAGES") == "0"
            or "glibc.malloc.hugetlb" in tunables or not transparent_huge_pages_available()):
        return
    given = {setting.split("=")[0] for setting in tunables.split(":")}
    ours = [f"{key}={value}" for key, value in MALLOC_TUNABLES.items() if key not in given]
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, (tunables, *ours))))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
