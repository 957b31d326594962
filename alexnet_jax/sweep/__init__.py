"""Ablation sweeps: many ordinary training runs, one results table.

    python -m alexnet_jax.sweep --sweep experiments/sweeps/lrn_vs_bn.py --workdir runs/lrn_vs_bn \\
        [--parallel K] [--quick] [--launcher local|slurm|submitit_local]

Each run is ``python -m alexnet_jax.main`` in ``DIR/<run>/``: the one trainer, in its own
process (``plan.py`` says which runs, ``launch.py`` starts them).  A tuned sweep runs in
two stages: each variant's grid with the first seed, then, once every grid run has
finished, the other seeds at each variant's setting chosen on validation error.  A
finished run is skipped and an interrupted one resumes, so a sweep started again
continues where it stopped.  At the end (and with ``--report``, without training) it
writes ``DIR/results.csv``, ``DIR/results.md`` and PNG plots (``results.py``).
"""
from __future__ import annotations

import os

from alexnet_jax.sweep.launch import LAUNCHERS, ClusterOptions, TrainingJob, launch
from alexnet_jax.sweep.plan import (Run, choose, command, expand, is_finished, load_sweep, plan,
                                    plan_seeds, why_unfinished)
from alexnet_jax.sweep.results import (aggregate, difference_interval, markdown_table,
                                       mean_std, report, run_record, tuning_table)

__all__ = ["LAUNCHERS", "ClusterOptions", "Run", "TrainingJob", "aggregate", "choose", "command",
           "difference_interval", "expand", "is_finished", "launch", "load_sweep",
           "markdown_table", "mean_std", "plan", "plan_seeds", "report", "run_record",
           "run_sweep", "tuning_table", "why_unfinished"]


def run_sweep(sweep_file: str, workdir: str, parallel: int = 1, quick: bool = False,
              report_only: bool = False, launcher: str = "local",
              cluster: ClusterOptions = ClusterOptions()) -> int:
    """Runs what is unfinished of a sweep, stage by stage, then reports; 0 if every run of
    the final stage finished (a diverged tuning run is a result, not a failure)."""
    sweep = load_sweep(sweep_file)
    os.makedirs(workdir, exist_ok=True)

    def run_stage(runs: list[Run]) -> list[str]:
        return [] if report_only else launch(sweep, runs, workdir, launcher, parallel, cluster)

    runs = plan(sweep, quick)
    failed = run_stage(runs)
    tuning = None
    if "tune" in sweep:
        choices, outcomes = choose(sweep, runs, workdir)
        tuning = (choices, outcomes)
        for variant, _ in expand(sweep):
            print(f"  {variant}: " + (", ".join(f"{k}={v}" for k, v in choices[variant])
                                      if variant in choices else "no finished tuning run"))
        runs = plan_seeds(sweep, choices, quick)
        failed = run_stage(runs)
    title = os.path.splitext(os.path.basename(sweep_file))[0] + (" (quick)" if quick else "")
    report(sweep, runs, workdir, title, tuning)
    print(f"Results: {workdir}/results.md, results.csv, curves.png, bars.png")
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; see their console.log. "
              "Run the sweep again to retry them.")
        return 1
    return 0
