"""One writer per workdir: a lock taken before a run writes anything there.

``DIR/.lock`` holds who took it (host, pid, when) as JSON.  It is created with
``O_CREAT | O_EXCL``, which is atomic on local file systems and on NFSv3+, so of two runs
started together exactly one gets it; in a multi-host run process 0 takes it for the group
(the others write nothing the lock protects).  The holder rewrites it every
``REFRESH_S`` seconds, so that a lock left by a holder that is gone is recognised and taken
over, saying so: on the holder's own host when its process no longer exists, on another
host when it was not refreshed for ``STALE_S`` seconds.  A second run on a held workdir
is refused with ``WorkdirInUseError`` (exit status 2), naming the holder.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time

from alexnet_jax.runtime.errors import WorkdirInUseError

LOCK_NAME = ".lock"
REFRESH_S = 30.0
STALE_S = 300.0


def _holder_gone(holder: dict, age_s: float) -> bool:
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError):
            return False
        return False
    return age_s > STALE_S


def _read(path: str) -> tuple[dict, float]:
    """The holder's record (empty where unreadable: a holder killed mid-write) and the
    lock's age in seconds."""
    try:
        age = time.time() - os.path.getmtime(path)
    except OSError:  # removed meanwhile: the next attempt creates it
        return {}, 0.0
    try:
        with open(path) as f:
            return json.load(f), age
    except (OSError, ValueError):
        return {}, age


class WorkdirLock:
    """The lock on ``workdir`` for the lifetime of a ``with`` block (``enabled`` False: a
    process that is not its group's process 0, which takes nothing)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, LOCK_NAME)
        self.enabled = enabled
        self._stop = threading.Event()
        self._record = {"host": socket.gethostname(), "pid": os.getpid(),
                        "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}

    def __enter__(self) -> WorkdirLock:
        if not self.enabled:
            return self
        for _ in range(3):  # a stale lock is removed, then created anew as any other
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder, age = _read(self.path)
                if not holder and age < 5.0:  # being written this instant
                    time.sleep(0.2)
                    continue
                if holder and not _holder_gone(holder, age):
                    raise WorkdirInUseError(
                        f"{os.path.dirname(self.path)} is in use by another run (pid "
                        f"{holder.get('pid')} on {holder.get('host')}, since "
                        f"{holder.get('since')}); wait for it to end, or choose another "
                        "--workdir.") from None
                print(f"warning: took over the lock on {os.path.dirname(self.path)}: its holder "
                      f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}) is gone.",
                      file=sys.stderr, flush=True)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._record, f)
            threading.Thread(target=self._refresh, daemon=True, name="workdir-lock").start()
            return self
        raise WorkdirInUseError(f"Could not take the lock {self.path}; another run keeps "
                                "taking it. Choose another --workdir.")

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_S):
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        self._stop.set()
        holder, _ = _read(self.path)
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)

