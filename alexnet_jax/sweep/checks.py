"""What a sweep checks before it starts anything, and which runs on disk it may reuse.

* Every run's resolved config passes the trainer's own validation
  (``config_base.validate``): a bad variant is one ``SweepError`` naming it, before any
  run starts, locally and on SLURM alike.
* A run is its config: ``config_base.config_hash`` of the config it trained with (in its
  ``summary.json`` and ``config.json``; computed from ``config.json`` for runs written
  before hashes were recorded).  A run on disk under a planned name whose hash differs
  from what the sweep file builds today is stale: the sweep refuses to start, naming it,
  unless asked to move such runs aside (``DIR/stale/<name>-<hash>``) and run them again.
* A planned run that has not run, but whose config a finished run holds under another
  name (a renamed variant, another sweep's run in the same directory), is that run: its
  directory becomes a link to it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from alexnet_jax.sweep.plan import Run, SweepError, diverged_at, resolved_config
from alexnet_jax.training import config_base

STALE_DIR = "stale"


def run_hashes(sweep: dict[str, Any], runs: Iterable[Run], num_devices: int) -> dict[str, str]:
    """Each run's config hash, after validating its resolved config for ``num_devices``
    devices; the first run that cannot work is a ``SweepError`` naming its variant."""
    hashes = {}
    for run in runs:
        config = resolved_config(sweep, run)
        try:
            config_base.validate(config, num_devices=num_devices)
        except ValueError as error:  # a ConfigError, or a value no config key takes
            raise SweepError(f"variant {run.variant!r} (run {run.name}): {error}") from None
        hashes[run.name] = config_base.config_hash(config)
    return hashes


def recorded_hash(run_dir: str) -> str | None:
    """The config hash a run on disk was made with: its summary's (the config it finished
    with), else its config.json's (recorded, or computed for runs that predate it); None
    for a directory without either."""
    for name in ("summary.json", "config.json"):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                record = json.load(f)
            if "config_hash" in record:
                return record["config_hash"]
            if name == "config.json":
                return config_base.config_hash(record)
    return None


def has_result(run_dir: str) -> bool:
    """Finished (its summary is written) or diverged (a result too)."""
    return os.path.exists(os.path.join(run_dir, "summary.json")) or diverged_at(run_dir)


def stale_runs(workdir: str, hashes: dict[str, str]) -> list[tuple[str, str]]:
    """(name, hash found) of every run on disk under a name in ``hashes`` whose recorded
    config differs from the one the sweep builds for that name today, or that has a
    result but no config to check it by (hash "unrecorded")."""
    stale = []
    for name, expected in hashes.items():
        path = os.path.join(workdir, name)
        found = recorded_hash(path)
        if found is None and os.path.isdir(path) and has_result(path):
            found = "unrecorded"
        if found is not None and found != expected:
            stale.append((name, found))
    return stale


def refuse_stale(workdir: str, stale: Sequence[tuple[str, str]], sweep_file: str) -> None:
    names = ", ".join(name for name, _ in stale[:5]) + (" ..." if len(stale) > 5 else "")
    raise SweepError(
        f"{len(stale)} run(s) in {workdir} were made with another config than {sweep_file} "
        f"builds for them today (or recorded none): {names}. Their results would not be what "
        "the sweep says; "
        f"add --rerun_stale to move them to {os.path.join(workdir, STALE_DIR)}/ and run them "
        "again (or restore the sweep file they were made with).")


def move_aside(workdir: str, stale: Sequence[tuple[str, str]]) -> list[str]:
    """Moves each stale run to ``DIR/stale/<name>-<hash>``; returns where they went."""
    moved = []
    for name, found in stale:
        target = os.path.join(workdir, STALE_DIR, f"{name}-{found}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(os.path.join(workdir, name), target)
        moved.append(target)
    return moved


def results_by_hash(workdir: str) -> dict[str, str]:
    """Config hash -> directory of a run with a result, among ``DIR/*`` and ``DIR/stale/*``
    (links excluded: they point at one of these)."""
    found = {}
    for parent in (workdir, os.path.join(workdir, STALE_DIR)):
        if not os.path.isdir(parent):
            continue
        for name in sorted(os.listdir(parent)):
            path = os.path.join(parent, name)
            if os.path.isdir(path) and not os.path.islink(path) and has_result(path):
                digest = recorded_hash(path)
                if digest is not None:
                    found.setdefault(digest, path)
    return found


def link_identical(workdir: str, hashes: dict[str, str]) -> list[tuple[str, str]]:
    """For each run not on disk whose config a run with a result holds under another name:
    ``DIR/<name>`` becomes a link to that run.  Returns (name, the run it is)."""
    available = results_by_hash(workdir)
    linked = []
    for name, digest in hashes.items():
        path = os.path.join(workdir, name)
        if digest in available and not os.path.lexists(path):
            os.symlink(os.path.relpath(available[digest], workdir), path)
            linked.append((name, os.path.relpath(available[digest], workdir)))
    return linked
