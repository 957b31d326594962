"""Several seeds of one experiment trained as one program: the training step vmapped
over the seeds.

    python -m alexnet_jax.main --config experiments/fashion_mnist.py \\
        --workdir 'runs/fm-seed{seed}' --seeds 0,1,2,3

Each seed has its own parameters, optimiser state, dropout keys (its ``TrainState``,
stacked along a leading seed axis) and data order (its own input pipeline, whose batches
are stacked likewise); ``jax.vmap(train_step)`` trains them all in one jitted call, and
``jax.vmap(eval_step)`` evaluates them on the same test batches.  Each seed writes what a
run of its own writes (``config.json`` with its config hash, ``metrics.jsonl``,
TensorBoard events and ``summary.json``) in its own workdir (``{seed}`` in ``--workdir``),
so a sweep counts it as that run; the seeds' stacked checkpoints live in one workdir of
their own (``{seed}`` as ``s0-1-2-3``), from which the same command resumes.  The seeds
train on one device (``parallelism=single``).  They are one run's trainer with several
runs (``loop.Trainer``), assembled by ``experiment.train_runs`` as one run is.

On a GPU a vmapped step fills the device with what one seed's batch leaves idle; on
XLA:CPU the seeds' convolutions become grouped ones, which it runs slower than one seed
at a time (``benchmarks/seeds_vmapped.py`` measures both): there, separate processes are
the sweep's default and this is an option (``--vmap_seeds``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import jax

from alexnet_jax.runtime import checkpoints, run_files, signals
from alexnet_jax.runtime.errors import ConfigError
from alexnet_jax.runtime.workdir_lock import WorkdirLock
from alexnet_jax.training import config_base, experiment

SEED = "{seed}"


def seed_config(config: Any, seed: int) -> Any:
    """``config`` with ``seed``: what a run of that seed alone trains with."""
    copy = config.copy_and_resolve_references()
    with copy.unlocked():
        copy.seed = seed
    return copy


def workdirs(template: str, seeds: Sequence[int]) -> tuple[list[str], str]:
    """Each seed's workdir (``{seed}`` in ``template`` replaced by it) and the seeds'
    shared one (by ``s`` and the seeds joined with ``-``)."""
    if SEED not in template:
        raise ConfigError(f"--workdir {template!r} must hold {SEED} when several --seeds train "
                          "together: each seed's run gets a workdir of its own.")
    return ([template.replace(SEED, str(seed)) for seed in seeds],
            template.replace(SEED, "s" + "-".join(map(str, seeds))))


def train_seeds(config: Any, seeds: Sequence[int], workdir_template: str,
                stop_deadline_s: float = signals.STOP_DEADLINE_S) -> list[dict[str, Any]]:
    """``experiment.train_and_evaluate`` for each of ``seeds`` at once (the module docstring);
    returns each seed's summary, as its run alone would write it."""
    runs, shared = workdirs(workdir_template, seeds)
    configs = [seed_config(config, seed) for seed in seeds]
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ConfigError(f"--seeds {','.join(map(str, seeds))}: give distinct seeds.")
    if config.parallelism != "single":
        raise ConfigError(f"config.parallelism={config.parallelism}: seeds trained together "
                          "run on one device; set parallelism=single.")
    for key in ("eval_only", "restore_from"):
        if config[key]:
            raise ConfigError(f"config.{key}={config[key]!r} is for one run: run it without "
                              "--seeds, once per seed.")
    for one in configs:
        config_base.validate(one, jax.device_count(), jax.process_count())
    for workdir in (*runs, shared):
        run_files.check_workdir(workdir)
    with contextlib.ExitStack() as held:
        for workdir in (*runs, shared):
            held.enter_context(WorkdirLock(workdir, enabled=jax.process_index() == 0))
        stop = held.enter_context(signals.StopSignals(stop_deadline_s,
                                                     checkpoints.directory_of(shared)))
        return experiment.train_runs(configs, runs, shared, stop, over_seeds=True)
