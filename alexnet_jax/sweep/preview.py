"""``--plan``: every run of a sweep with its stage, overrides and state, and the machine time
the unfinished ones should take (``cost.py``), printed before anything starts."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from alexnet_jax.sweep import cost
from alexnet_jax.sweep.plan import Run, is_finished, max_seeds


def _state(workdir: str, run: Run, stale: Sequence[str]) -> str:
    path = os.path.join(workdir, run.name)
    if run.name in stale:
        return "stale"
    if os.path.islink(path):
        return "reused"
    if is_finished(workdir, run):
        return "done"
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return "resumes"
    return "new"


def _specific(run: Run, shared: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in run.overrides
                    if key not in shared or shared[key] != value)


def describe(sweep: dict[str, Any], sweep_file: str, workdir: str, stages: Sequence[
        tuple[str, list[Run]]], later: str, later_runs: int, shared: dict[str, Any],
        stale: Sequence[str] = (), estimate: Callable = cost.estimate) -> str:
    """The plan as text: ``stages`` (title, runs) known now, then ``later`` (what a later
    stage will run once earlier ones have chosen) with at most ``later_runs`` runs;
    ``stale`` runs count as to be run again."""
    known = [run for _, runs in stages for run in runs]
    per_run, source = estimate(sweep, known, workdir)
    lines = [f"Sweep {sweep_file} in {workdir}; every run: {sweep['base']} with "
             + " ".join(f"{k}={v}" for k, v in shared.items())]
    pending_s = 0.0
    for title, runs in stages:
        lines.append(f"{title}: {len(runs)} runs")
        for run in runs:
            state = _state(workdir, run, stale)
            seconds = per_run[run.variant]
            to_run = state in ("new", "resumes", "stale")
            pending_s += seconds if to_run else 0.0
            lines.append(f"  {state:<8} {run.name:<32} {_specific(run, shared)}"
                         + (f"   ~{duration(seconds)}" if to_run else ""))
    mean = sum(per_run.values()) / len(per_run)
    if later:
        lines.append(later)
    lines.append(f"Machine time: ~{duration(pending_s)} for the runs above not yet done"
                 + (f", and up to ~{duration(later_runs * mean)} for the {later_runs} runs "
                    "of later stages" if later_runs else "")
                 + f" (the runs one after another; from {source}).")
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """Seconds as a reader takes them: "45 s", "12 min", "3.4 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def later_stages(sweep: dict[str, Any], variants: int, choices_known: bool,
                 quick: bool = False) -> tuple[str, int]:
    """What is planned beyond the runs listed, in words, and its most runs (``quick``, a
    smoke test, adds no seeds for precision)."""
    seeds = sweep.get("seeds", [0])
    parts, most = [], 0
    if "tune" in sweep and not choices_known:
        parts.append(f"then seeds {', '.join(map(str, seeds[1:]))} of each variant at the "
                     "setting chosen on validation error")
        most += variants * (len(seeds) - 1)
    if "precision" in sweep and not quick:
        parts.append(f"then rounds of more seeds, up to {max_seeds(sweep)} per variant, for "
                     "each variant whose paired 95% interval against the baseline still spans "
                     f"zero and is wider than ±{sweep['precision']} points")
        most += variants * (max_seeds(sweep) - len(seeds))
    return ("; ".join(parts).capitalize() + "." if parts else "", most)
