"""A process that ends with the one that started it, where that asked
(``DIE_WITH_PARENT``: a sweep's trainers); ``alexnet_jax.prepare_process`` calls it first."""
from __future__ import annotations

import os
import signal
import sys

# Set by a parent (to its pid) that wants this process to get SIGTERM when it dies.
DIE_WITH_PARENT = "ALEXNET_JAX_DIE_WITH_PARENT"


def die_with_parent() -> None:
    """Where ``DIE_WITH_PARENT`` names this process's parent: SIGTERM when the parent dies,
    even by SIGKILL (Linux's PR_SET_PDEATHSIG; the trainer saves a checkpoint and stops),
    and an exit now if it is gone already.  Asked for by the process itself, after the
    fork, since a ``preexec_fn`` would run Python in a forked copy of a threaded process."""
    parent = os.environ.pop(DIE_WITH_PARENT, "")
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):
        sys.exit(f"error: the process that started this one ({parent}) is gone.")


def started_at() -> float | None:
    """When this process started (``time.time()``'s clock), before the interpreter's imports
    and any ``exec`` that restarted it (the CPU extra's malloc settings keep its pid);
    None where the system does not say (Linux's /proc does)."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    import time
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
