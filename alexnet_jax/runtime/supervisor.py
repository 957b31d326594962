"""A multi-host run's process under a parent that says how it ended.

When a process of a multi-host run dies, the survivors first see their collectives fail
(gloo: "Connection closed by peer"), then JAX's distributed runtime notices the missing
heartbeats and ends each survivor itself: an abort from C++, with a dump of every
thread, that Python cannot catch.  So ``python -m alexnet_jax.main`` with multi-host
flags runs the trainer in a child process and watches it.  The child's output passes
through (less gloo's notice of each communicator it connects); the child reports each
step it takes on a pipe; where the runtime ends it (or it reports a collective that
failed), the parent holds back the runtime's dump and prints one line instead: which
process was lost, at which step, and the step that restarting every process with the
same command resumes from.  It then exits with status 1.  The child writes no core dump.
"""
from __future__ import annotations

import ctypes
import os
import re
import resource
import signal
import subprocess
import sys
import threading
from typing import Any

from alexnet_jax.runtime import checkpoints

SUPERVISED = "ALEXNET_JAX_STATUS_FD"  # in the child's environment: where it reports
LOST = "lost"  # what the child reports after a collective failed on a lost peer
# The distributed runtime's own lines, from the first sign of a lost process: held back.
RUNTIME_FAILURE = re.compile(r"coordination_service|Terminating process because the JAX "
                             r"distributed service|heartbeat|Gloo .* failed|pair\.cc")
# How the runtime names the processes ("tasks") whose heartbeats stopped.
LOST_TASKS = re.compile(r"Task (\d+) heartbeat timeout|stopped sending heartbeats\):\s*"
                        r"((?:\d+[\s,]*)+)")
# gloo's C++ writes this once per communicator as a run starts: nothing a user acts on.
GLOO_CONNECTED = re.compile(r"\[Gloo\] Rank \d+ is connected to \d+ peer ranks")
PR_SET_PDEATHSIG = 1  # prctl(2)


def supervised() -> bool:
    return SUPERVISED in os.environ


def report(text: str) -> None:
    """Tells the parent (if any) a step taken, or ``LOST``."""
    fd = os.environ.get(SUPERVISED)
    if fd is not None:
        try:
            os.write(int(fd), f"{text}\n".encode())
        except OSError:
            pass


def _in_child() -> None:
    """No core dump; and the child dies with its parent (Linux), so that a SIGKILL of the
    command a user started ends the training too."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def supervise(argv: list[str], checkpoints_dir: str, process_index: int, processes: int
              ) -> int:
    """Runs ``argv`` (this very command) as a child under watch; returns the exit status
    to end with."""
    read, write = os.pipe()
    child = subprocess.Popen(argv, env={**os.environ, SUPERVISED: str(write),
                                        "PYTHONUNBUFFERED": "1"},  # its lines as they come
                             pass_fds=(write,), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=_in_child)
    os.close(write)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    last: dict[str, Any] = {"step": None, "lost": False}

    def follow_reports() -> None:
        with os.fdopen(read) as reports:
            for line in reports:
                if line.strip() == LOST:
                    last["lost"] = True
                elif line.strip().isdigit():
                    last["step"] = int(line)

    def pass_output() -> None:
        for raw in child.stdout:
            line = raw.decode(errors="replace")
            if not GLOO_CONNECTED.match(line):
                sys.stdout.write(line)
                sys.stdout.flush()

    threads = [threading.Thread(target=target, daemon=True)
               for target in (follow_reports, pass_output)]
    for thread in threads:
        thread.start()
    held_back: list[str] = []
    for raw in child.stderr:
        line = raw.decode(errors="replace")
        if GLOO_CONNECTED.match(line):
            continue
        if held_back or last["lost"] or RUNTIME_FAILURE.search(line):
            held_back.append(line)
        else:
            sys.stderr.write(line)
            sys.stderr.flush()
    status = child.wait()
    for thread in threads:
        thread.join(timeout=5)
    if last["lost"] or (held_back and status != 0):
        print(lost_process_line(held_back, last["step"], checkpoints_dir, process_index,
                                processes), file=sys.stderr, flush=True)
        return 1
    for line in held_back:  # not a lost process after all: show what was held
        sys.stderr.write(line)
    return 128 - status if status < 0 else status


def lost_process_line(runtime_lines: list[str], step: int | None, checkpoints_dir: str,
                      process_index: int, processes: int) -> str:
    """The one line a survivor ends with."""
    text = "".join(runtime_lines)
    tasks = {int(task) for match in LOST_TASKS.findall(text) for group in match
             for task in re.findall(r"\d+", group)}
    others = sorted(tasks - {process_index})
    of = f" of {processes}" if processes else ""
    if others:
        who = f"process {', '.join(map(str, others))}{of} was lost"
    elif process_index != 0 and any("coordination" in line for line in runtime_lines):
        who = f"process 0{of} (the coordinator) was lost"
    else:
        who = "another process was lost"
    at = f" at step {step}" if step is not None else ""
    this = f"This is process {process_index}" if process_index >= 0 else "This process"
    return (f"error: {this}: {who}{at} (it stopped, was killed or "
            f"its host went down). Nothing is lost: restart every process with the same "
            f"command to resume from {resume_point(checkpoints_dir)}.")


def resume_point(checkpoints_dir: str) -> str:
    """Where a restart resumes, in words: the newest complete step in ``latest/``."""
    latest = os.path.join(checkpoints_dir, "latest")
    steps = checkpoints.complete_steps(latest)
    return f"step {steps[-1]} (its checkpoint is in {latest})" if steps else \
        "the start (no checkpoint was complete)"
