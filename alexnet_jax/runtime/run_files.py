"""The files a run writes in its workdir besides its metrics and checkpoints: the check
that the workdir can be written, JSON records (``config.json``, ``summary.json``,
``eval.json``), and ``metrics.jsonl`` cut back to a resumed step.  Only process 0 writes
files the processes share."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

import jax


def check_workdir(workdir: str) -> None:
    """That the workdir can be written (created if missing), leaving nothing behind."""
    try:
        os.makedirs(workdir, exist_ok=True)
        # A probe of its own per process: the processes of a multi-host run share the workdir.
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test."):
            pass
    except OSError as error:
        raise PermissionError(f"Cannot write to workdir {workdir!r} ({error.strerror}); choose "
                              "another --workdir or fix its permissions.") from error




def write_json(workdir: str, name: str, record: dict[str, Any]) -> None:
    if jax.process_index() == 0:  # the primary process writes for all
        with open(os.path.join(workdir, name), "w") as f:
            json.dump(record, f, indent=1)



def truncate_metrics(workdir: str, step: int) -> None:
    """Drops records written after ``step`` by a run that died before its next checkpoint,
    so that the resumed run's records follow on without duplicates, and a line a crash cut
    short mid-write (with a warning naming it)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() != 0 or not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                print(f"warning: dropped line {number} of {path}, which a crash cut short "
                      f"mid-write: {line.strip()[:60]!r}", file=sys.stderr, flush=True)
                continue
            if record["step"] <= step:
                kept.append(line.rstrip("\n") + "\n")
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)
