"""The entry points' restart with huge pages for malloc (kernels/huge_pages.py)."""
import os
import subprocess
import sys

import pytest

from alexnet_jax.kernels import huge_pages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Restarts, then reports the tunables, how much of a 256 MiB malloc'd block, written
# through, the kernel backs with huge pages, and how much of it stays resident once freed.
PROBE = """
import ctypes, os
from alexnet_jax.kernels import huge_pages
huge_pages.restart_with_huge_pages()
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def kb(field, path):
    with open(path) as f:
        return sum(int(line.split()[1]) for line in f if line.startswith(field + ':'))

size = 256 << 20
block = libc.malloc(ctypes.c_size_t(size))
ctypes.memset(block, 1, size)
huge_kb = kb('AnonHugePages', '/proc/self/smaps')
resident_kb = kb('VmRSS', '/proc/self/status')
libc.free(ctypes.c_void_p(block))
released_kb = resident_kb - kb('VmRSS', '/proc/self/status')
print(os.environ.get('GLIBC_TUNABLES', ''), huge_kb, released_kb, sep='|')
"""


def run_probe(**env_changes):
    env = {**os.environ, **env_changes}
    env = {k: v for k, v in env.items() if v is not None}
    completed = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO,
                               capture_output=True, text=True, check=True)
    tunables, huge_kb, released_kb = completed.stdout.strip().splitlines()[-1].split("|")
    return tunables, int(huge_kb), int(released_kb)


needs_huge_pages = pytest.mark.skipif(
    sys.platform != "linux" or not huge_pages.transparent_huge_pages_available(),
    reason="transparent huge pages are off here")


@needs_huge_pages
def test_restart_gives_malloc_huge_pages_it_keeps():
    tunables, huge_kb, released_kb = run_probe(GLIBC_TUNABLES=None, ALEXNET_JAX_HUGE_PAGES=None)
    assert tunables == ":".join(f"{k}={v}" for k, v in huge_pages.MALLOC_TUNABLES.items())
    assert huge_kb >= 128 << 10  # at least half the block on 2 MiB pages
    assert released_kb < 16 << 10  # freed, the block stays for the next malloc


@needs_huge_pages
def test_restart_keeps_the_tunables_a_user_set():
    tunables, huge_kb, released_kb = run_probe(
        GLIBC_TUNABLES="glibc.malloc.mmap_max=65536", ALEXNET_JAX_HUGE_PAGES=None)
    ours = [f"{k}={v}" for k, v in huge_pages.MALLOC_TUNABLES.items() if "mmap_max" not in k]
    assert tunables == ":".join(["glibc.malloc.mmap_max=65536", *ours])
    assert huge_kb >= 128 << 10
    assert released_kb > 200 << 10  # the user's mmap_max: a big block is unmapped when freed


@needs_huge_pages
def test_no_restart_when_switched_off():
    tunables, huge_kb, released_kb = run_probe(GLIBC_TUNABLES=None, ALEXNET_JAX_HUGE_PAGES="0")
    assert tunables == ""
    assert released_kb > 200 << 10  # glibc's default: unmapped when freed
    with open(huge_pages.THP_SETTING) as f:
        if "[madvise]" in f.read():  # then only memory that asks gets huge pages
            assert huge_kb < 128 << 10
