"""The entry points' restart with malloc that keeps what it frees (kernels/malloc_tunables.py)."""
import os
import subprocess
import sys

import pytest

from alexnet_jax.kernels import malloc_tunables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Restarts, then reports the tunables and how much of a 256 MiB malloc'd block, written
# through, leaves the process's resident memory when it is freed.
PROBE = """
import ctypes, os
from alexnet_jax.kernels import malloc_tunables
malloc_tunables.restart_with_malloc_tunables()
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def resident_kb():
    with open('/proc/self/status') as f:
        return sum(int(line.split()[1]) for line in f if line.startswith('VmRSS:'))

size = 256 << 20
block = libc.malloc(ctypes.c_size_t(size))
ctypes.memset(block, 1, size)
before = resident_kb()
libc.free(ctypes.c_void_p(block))
print(os.environ.get('GLIBC_TUNABLES', ''), before - resident_kb(), sep='|')
"""

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="glibc's tunables")


def run_probe(**env_changes):
    env = {**os.environ, **env_changes}
    env = {k: v for k, v in env.items() if v is not None}
    completed = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO,
                               capture_output=True, text=True, check=True)
    tunables, released_kb = completed.stdout.strip().splitlines()[-1].split("|")
    return tunables, int(released_kb)


@linux_only
def test_restart_gives_malloc_that_keeps_a_freed_block():
    tunables, released_kb = run_probe(GLIBC_TUNABLES=None, ALEXNET_JAX_MALLOC_TUNABLES=None)
    assert tunables == ":".join(f"{k}={v}" for k, v in malloc_tunables.MALLOC_TUNABLES.items())
    assert released_kb < 16 << 10  # freed, the block stays for the next malloc


@linux_only
def test_restart_keeps_the_tunables_a_user_set():
    tunables, released_kb = run_probe(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000000",
                                      ALEXNET_JAX_MALLOC_TUNABLES=None)
    ours = [f"{k}={v}" for k, v in malloc_tunables.MALLOC_TUNABLES.items()
            if "trim_threshold" not in k]
    assert tunables == ":".join(["glibc.malloc.trim_threshold=1000000", *ours])
    assert released_kb > 200 << 10  # the user's low threshold: the heap's top is trimmed


@linux_only
def test_no_restart_when_switched_off_or_chosen():
    for env in ({"GLIBC_TUNABLES": None, "ALEXNET_JAX_MALLOC_TUNABLES": "0"},
                {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536",
                 "ALEXNET_JAX_MALLOC_TUNABLES": None}):
        tunables, released_kb = run_probe(**env)
        assert tunables == (env["GLIBC_TUNABLES"] or "")
        assert released_kb > 200 << 10  # glibc's default: a big block is unmapped when freed
