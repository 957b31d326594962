"""The entry points' restart with huge pages for malloc (kernels/huge_pages.py)."""
import os
import subprocess
import sys

import pytest

from alexnet_jax.kernels import huge_pages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Restarts, then reports the tunables and how much of a 256 MiB malloc'd block, written
# through, the kernel backs with huge pages.
PROBE = """
import ctypes, os
from alexnet_jax.kernels import huge_pages
huge_pages.restart_with_huge_pages()
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
size = 256 << 20
block = libc.malloc(ctypes.c_size_t(size))
ctypes.memset(block, 1, size)
huge_kb = 0
with open('/proc/self/smaps') as f:
    for line in f:
        if line.startswith('AnonHugePages:'):
            huge_kb += int(line.split()[1])
print(os.environ.get('GLIBC_TUNABLES', ''), huge_kb, sep='|')
"""


def run_probe(**env_changes):
    env = {**os.environ, **env_changes}
    env = {k: v for k, v in env.items() if v is not None}
    completed = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO,
                               capture_output=True, text=True, check=True)
    tunables, huge_kb = completed.stdout.strip().splitlines()[-1].split("|")
    return tunables, int(huge_kb)


needs_huge_pages = pytest.mark.skipif(
    sys.platform != "linux" or not huge_pages.transparent_huge_pages_available(),
    reason="transparent huge pages are off here")


@needs_huge_pages
def test_restart_gives_malloc_huge_pages_and_keeps_other_tunables():
    tunables, huge_kb = run_probe(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000000",
                                  ALEXNET_JAX_HUGE_PAGES=None)
    assert tunables == "glibc.malloc.trim_threshold=1000000:" + huge_pages.HUGE_PAGES_TUNABLE
    assert huge_kb >= 128 << 10  # at least half the block on 2 MiB pages


@needs_huge_pages
def test_no_restart_when_switched_off():
    tunables, huge_kb = run_probe(GLIBC_TUNABLES=None, ALEXNET_JAX_HUGE_PAGES="0")
    assert tunables == ""
    with open(huge_pages.THP_SETTING) as f:
        if "[madvise]" in f.read():  # then only memory that asks gets huge pages
            assert huge_kb < 128 << 10
