"""Huge pages for XLA:CPU's arrays: the command-line entry points restart with them.

XLA:CPU keeps its arrays in memory from glibc's ``malloc``, on 4 KiB pages unless told
otherwise, and writing the big ones (fc6's weights and gradient) is then markedly slower
(docs/performance.md).  glibc (2.35 and later) asks the kernel for transparent huge pages
when started with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``; it reads that only at
start-up, so ``python -m alexnet_jax.main`` and ``python -m alexnet_jax.benchmark``
restart themselves with it.  The benchmark's peers keep the environment they were given.
"""
from __future__ import annotations

import os
import sys

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
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
    pages.  Does nothing where that is already so, off Linux, without transparent huge
    pages, or with ``ALEXNET_JAX_HUGE_PAGES=0``.  Call it before anything else starts."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (sys.platform != "linux" or os.environ.get("ALEXNET_JAX_HUGE_PAGES") == "0"
            or "glibc.malloc.hugetlb" in tunables or not transparent_huge_pages_available()):
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, (tunables, HUGE_PAGES_TUNABLE))))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
