"""Ablation sweeps: many ordinary training runs, one results table.

    python -m alexnet_jax.sweep --sweep experiments/sweeps/lrn_vs_bn.py --workdir runs/lrn_vs_bn \\
        [--plan] [--parallel K] [--quick] [--launcher local|slurm|submitit_local] \\
        [--rerun_stale] [--vmap_seeds]

Each run is ``python -m alexnet_jax.main`` in ``DIR/<run>/``: the one trainer, in its own
process (``plan.py`` says which runs, ``launch.py`` starts them).  Before anything starts,
every run's config is validated and every run on disk checked against the config the
sweep builds for it today (``checks.py``); ``--plan`` then prints the runs and their
expected machine time (``preview.py``) and stops.  A tuned sweep runs in two stages: each
variant's grid with the first seed, then, once every grid run has finished, the other
seeds at each variant's setting chosen on validation error.  With a ``precision``, seeds
are added in rounds until each variant's verdict settles (``precision.py``).  A finished
run is skipped and an interrupted one resumes, so a sweep started again continues where it
stopped.  At the end (and with ``--report``, without training) it writes
``DIR/results.csv``, ``DIR/results.md`` and PNG plots (``results.py``).
"""
from __future__ import annotations

import json
import os
from typing import Any

from alexnet_jax.runtime.workdir_lock import WorkdirLock
from alexnet_jax.sweep import checks, preview
from alexnet_jax.sweep.launch import LAUNCHERS, ClusterOptions, TrainingJob, launch
from alexnet_jax.sweep.plan import (
    Run,
    SweepError,
    choose,
    command,
    expand,
    is_finished,
    load_sweep,
    max_seeds,
    plan,
    plan_seeds,
    tuning_settings,
    why_unfinished,
)
from alexnet_jax.sweep.precision import difference_interval, mean_std, next_round
from alexnet_jax.sweep.results import aggregate, markdown_table, report, run_record, tuning_table

__all__ = ["LAUNCHERS", "ClusterOptions", "Run", "SweepError", "TrainingJob", "aggregate",
           "choose", "command", "difference_interval", "expand", "is_finished", "launch",
           "load_sweep", "markdown_table", "mean_std", "plan", "plan_seeds", "report",
           "run_record", "run_sweep", "tuning_table", "why_unfinished"]


def seed_list(sweep: dict[str, Any], count: int) -> list[int]:
    """The first ``count`` seeds: the sweep's ``seeds``, then the next integers."""
    seeds = list(sweep.get("seeds", [0]))
    while len(seeds) < count:
        seeds.append(max(seeds) + 1)
    return seeds[:max(count, 1)]


def candidate_runs(sweep: dict[str, Any], quick: bool) -> list[Run]:
    """Every run the sweep could make: each variant at each tuning setting with each seed
    it may reach (``max_seeds`` of a precision sweep)."""
    count = max_seeds(sweep) if "precision" in sweep else len(sweep.get("seeds", [0]))
    seeds = seed_list(sweep, count)
    return [run for variant, _ in expand(sweep) for setting in tuning_settings(sweep, variant)
            for run in plan_seeds(sweep, {variant: setting}, quick, {variant: seeds})]


def _devices(launcher: str, cluster: ClusterOptions) -> int:
    """The devices a run will see, for validating its layout."""
    if launcher == "slurm":
        return max(1, cluster.gpus_per_run)
    import jax
    return jax.device_count()


def _differences(workdir: str, runs: list[Run], baseline: str) -> dict[str, list[float]]:
    """Variant -> its test top-1 error minus the baseline's, seed by seed, over the seeds
    both have finished."""
    errors: dict[str, dict[int, float]] = {}
    for run in runs:
        path = os.path.join(workdir, run.name, "summary.json")
        if os.path.exists(path):
            with open(path) as f:
                errors.setdefault(run.variant, {})[run.seed] = json.load(f)["test_top1_error"]
    base = errors.get(baseline, {})
    return {variant: [seeds[s] - base[s] for s in sorted(set(seeds) & set(base))]
            for variant, seeds in errors.items() if variant != baseline}


def run_sweep(sweep_file: str, workdir: str, parallel: int = 1, quick: bool = False,
              report_only: bool = False, launcher: str = "local",
              cluster: ClusterOptions = ClusterOptions(), rerun_stale: bool = False,
              plan_only: bool = False, vmap_seeds: bool = False) -> int:
    """Checks every run, then runs what is unfinished of a sweep, stage by stage (and round
    by round), then reports; 0 if every run of the final stage finished (a diverged tuning
    run is a result, not a failure).  A ``SweepError`` (one line: a bad variant, stale
    runs, nothing to report) before anything starts."""
    sweep = load_sweep(sweep_file)
    baseline = sweep.get("baseline") or expand(sweep)[0][0]
    title = os.path.splitext(os.path.basename(sweep_file))[0] + (" (quick)" if quick else "")
    initial = list(sweep.get("seeds", [0]))
    if report_only:
        choices = choose(sweep, plan(sweep, quick), workdir) if "tune" in sweep else None
        seeds = {variant: seed_list(sweep, max_seeds(sweep)) for variant, _ in expand(sweep)}
        final = [run for run in plan_seeds(sweep, choices[0] if choices else
                                           {v: () for v, _ in expand(sweep)}, quick, seeds)
                 if run.seed in initial or is_finished(workdir, run)]
        report(sweep, final, workdir, title, choices)
        print(f"Results: {workdir}/results.md, results.csv, curves.png, bars.png")
        return 0

    hashes = checks.run_hashes(sweep, candidate_runs(sweep, quick), _devices(launcher, cluster))
    stale = checks.stale_runs(workdir, hashes)
    first = plan(sweep, quick)
    if plan_only:
        shared = {**sweep.get("overrides", {}), **(sweep.get("quick", {}) if quick else {})}
        stages = [("Stage 1: each variant's tuning grid, first seed" if "tune" in sweep else
                   "Stage 1: every variant and seed", first)]
        try:
            chosen = choose(sweep, first, workdir)[0] if "tune" in sweep else {}
        except ValueError:  # a finished run without the error chosen on: listed as it is
            chosen = {}
        if "tune" in sweep and len(chosen) == len(expand(sweep)):  # the grid is done
            stages.append(("Stage 2: the seeds at each variant's chosen setting",
                           plan_seeds(sweep, chosen, quick)))
        later, most = preview.later_stages(sweep, len(expand(sweep)), len(stages) > 1, quick)
        print(preview.describe(sweep, sweep_file, workdir, stages, later, most, shared,
                               [name for name, _ in stale]))
        if stale:
            print(f"Stale: {', '.join(name for name, _ in stale)} (made with another config, "
                  "or recorded none): the sweep starts only with --rerun_stale, which moves "
                  "them aside and runs them again.")
        return 0
    if stale and not rerun_stale:
        checks.refuse_stale(workdir, stale, sweep_file)
    os.makedirs(workdir, exist_ok=True)
    with WorkdirLock(workdir):  # one sweep at a time; each run takes its own
        for moved in checks.move_aside(workdir, stale):
            print(f"Moved aside {moved}: made with another config; it runs again.")

        def run_stage(runs: list[Run]) -> list[str]:
            for name, source in checks.link_identical(workdir, {r.name: hashes[r.name]
                                                                for r in runs}):
                print(f"  reused {source} as {name} (the same config)")
            return launch(sweep, runs, workdir, launcher, parallel, cluster, vmap_seeds)

        failed = run_stage(first)
        tuning, choices = None, {variant: () for variant, _ in expand(sweep)}
        if "tune" in sweep:
            choices, outcomes = choose(sweep, first, workdir)
            tuning = (choices, outcomes)
            for variant, _ in expand(sweep):
                print(f"  {variant}: " + (", ".join(f"{k}={v}" for k, v in choices[variant])
                                          if variant in choices else "no finished tuning run"))
        seeds = {variant: initial for variant in choices}
        runs = plan_seeds(sweep, choices, quick, seeds)
        if "tune" in sweep:
            failed = run_stage(runs)
        while "precision" in sweep and not failed and not quick:  # a smoke test adds none
            targets = next_round(_differences(workdir, runs, baseline), sweep["precision"] / 100,
                                 max_seeds(sweep))
            if not targets:
                break
            print("More seeds, for variants not yet settled: "
                  + ", ".join(f"{variant} to {count}" for variant, count in targets.items()))
            for variant, count in targets.items():
                seeds[variant] = seed_list(sweep, count)
            seeds[baseline] = seed_list(sweep, max(len(s) for s in seeds.values()))
            runs = plan_seeds(sweep, choices, quick, seeds)
            failed = run_stage(runs)
        report(sweep, runs, workdir, title, tuning)
        print(f"Results: {workdir}/results.md, results.csv, curves.png, bars.png")
        if failed:
            print(f"{len(failed)} run(s) failed: {', '.join(failed)}; see their console.log. "
                  "Run the sweep again to retry them.")
            return 1
        return 0
