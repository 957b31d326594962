"""Process settings for the command-line entry points (training, benchmark).

XLA:CPU keeps its arrays in memory from glibc's ``malloc``, on 4 KiB pages unless told
otherwise, and the big ones then run slowly: writing fc6's weight gradient (151 MB) took
50 ms on 4 KiB pages and 19 ms on 2 MiB ones, a forward-backward of the seed network at
batch 32 0.72 s against 0.67 s, of the small model at batch 128 0.216 s against 0.18 s.
glibc (2.35 and later) asks the kernel for transparent huge pages when started with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``; it reads that only at start-up, so the entry
points restart themselves with it.  PyTorch's CPU benchmark did not gain from it (0.91 s
against 0.98 s), so ``--compare`` leaves its peers' environment alone.
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
