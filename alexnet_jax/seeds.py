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
train on one device (``parallelism=single``).

On a GPU a vmapped step fills the device with what one seed's batch leaves idle; on
XLA:CPU the seeds' convolutions become grouped ones, which it runs slower than one seed
at a time (``benchmarks/seeds_vmapped.py`` measures both): there, separate processes are
the sweep's default and this is an option (``--vmap_seeds``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import (
    checkpoints,
    config_base,
    evaluation,
    experiment,
    input_pipeline,
    optim,
    run_io,
    train,
)
from alexnet_jax.errors import ConfigError
from alexnet_jax.metrics import MetricWriter
from alexnet_jax.workdir_lock import WorkdirLock

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


@dataclasses.dataclass
class Plateaus:
    """Each seed's plateau policy, checkpointed as one."""

    policies: list[optim.PlateauPolicy]

    def state_dict(self) -> list[dict[str, Any]]:
        return [policy.state_dict() for policy in self.policies]

    @classmethod
    def from_state_dict(cls, state: list[dict[str, Any]]) -> Plateaus:
        return cls([optim.PlateauPolicy.from_state_dict(one) for one in state])


def stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


class SeedsTrainer(train.Trainer):
    """``train.Trainer``'s loop over stacked seeds: batches stacked from each seed's
    pipeline, and each seed's metrics, evaluations and plateau policy its own."""

    def __init__(self, session: train.Session, resumed: checkpoints.Resumed,
                 pipelines: list[Any], writers: list[MetricWriter]):
        super().__init__(session, resumed)
        self.pipelines, self.writers = pipelines, writers

    def batches(self, step: int) -> Iterator[dict]:
        for epoch in range(step // self.steps_per_epoch, self.config.num_epochs):
            start = step % self.steps_per_epoch
            for batch in zip(*(p.train_batches(epoch, start_step=start) for p in self.pipelines)):
                yield {key: np.stack([one[key] for one in batch]) for key in batch[0]}
            step = 0

    def log(self, step: int) -> None:
        if not self.window:
            return
        fetched = jax.device_get(self.window)
        records = [self.log_run(step, [{k: v[i] for k, v in m.items()} for m in fetched],
                                writer, f" of seed {seed}")
                   for i, (seed, writer) in enumerate(zip(self.seeds, self.writers))]
        self.progress.update(len(self.window), {k: float(np.mean([r[k] for r in records]))
                                                for k in records[0]})
        self.window, self.window_start = [], time.time()

    @property
    def seeds(self) -> list[int]:
        return [p.config.seed for p in self.pipelines]

    def current_step(self) -> int:
        return int(self.state.step[0])  # the seeds step together

    def evaluated_at(self, step: int) -> bool:
        return all(history and history[-1]["step"] == step for history in self.history)

    def evaluate(self, step: int) -> None:
        factors = []
        for i, results in enumerate(self.evaluate_splits(step)):
            params = jax.tree.map(lambda leaf, i=i: leaf[i], self.state.params)
            entry = evaluation.record(step, step // self.steps_per_epoch, results,
                                      self.history[i], self.writers[i], params)
            policy = self.plateau.policies[i]
            reduce = (self.config.optim.schedule == "plateau"
                      and policy.update(entry["selection_top1_error"]))
            factors.append(policy.factor if reduce else 1.0)
        if any(factor != 1.0 for factor in factors):
            self.state = self.state.replace(opt_state=optim.scale_learning_rate(
                self.state.opt_state, np.asarray(factors, np.float32)))
        self.window_start = time.time()

    def checkpoint(self, step: int) -> None:
        self.session.manager.save(step, self.state, self.plateau, self.history, self.wall_s())
        self.window_start = time.time()


def train_seeds(config: Any, seeds: Sequence[int], workdir_template: str,
                stop_deadline_s: float = run_io.STOP_DEADLINE_S) -> list[dict[str, Any]]:
    """``experiment.train_and_evaluate`` for each of ``seeds`` at once (the module docstring);
    returns each seed's summary, as its run alone would write it."""
    runs, shared = workdirs(workdir_template, seeds)
    configs = [seed_config(config, seed) for seed in seeds]
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ConfigError(f"--seeds {','.join(map(str, seeds))}: give distinct seeds.")
    if config.parallelism != "single":
        raise ConfigError(f"config.parallelism={config.parallelism}: seeds trained together "
                          "run on one device; set parallelism=single.")
    for one in configs:
        config_base.validate(one, jax.device_count(), jax.process_count())
    for workdir in (*runs, shared):
        run_io.check_workdir(workdir)
    with contextlib.ExitStack() as held:
        for workdir in (*runs, shared):
            held.enter_context(WorkdirLock(workdir, enabled=jax.process_index() == 0))
        stop = held.enter_context(run_io.StopSignals(stop_deadline_s,
                                                     checkpoints.directory_of(shared)))
        return _train_seeds(configs, runs, shared, stop)


def _train_seeds(configs: list[Any], runs: list[str], shared: str,
                 stop: run_io.StopSignals) -> list[dict[str, Any]]:
    started, config = time.time(), configs[0]
    pipelines = [input_pipeline.create_pipeline(one) for one in configs]
    stop.check("while reading the data; nothing was changed")
    pipeline = pipelines[0]
    parts = experiment.build(config, pipeline)
    layout, model_config = parts.layout, parts.model_config
    steps = train.make_steps(layout, parts.tx, pipeline.center_view, pipeline.device,
                             over_seeds=True)
    manager = checkpoints.CheckpointManager(shared, config)
    fresh = stack([train.create_train_state(one.seed, layout, parts.tx) for one in configs])
    plateaus = Plateaus([optim.PlateauPolicy.from_config(one.optim) for one in configs])
    resumed = manager.resume(fresh, plateaus)
    resumed = resumed._replace(history=resumed.history or [[] for _ in configs])
    step = int(resumed.state.step[0])
    stop.check("during start-up; nothing was changed")
    writers = [run_io.open_run(workdir, one, model_config, step)
               for one, workdir in zip(configs, runs)]
    print(f"{len(configs)} seeds ({', '.join(str(one.seed) for one in configs)}) of "
          f"{config.model.variant} AlexNet on {config.data.dataset}, vmapped in one program: "
          f"{pipeline.steps_per_epoch} steps/epoch x {config.num_epochs} epochs, batch "
          f"{config.batch_size} each; {layout.describe(config.batch_size)}.")
    session = train.Session(config, pipeline, layout, steps, manager, writers[0], stop, started)
    trainer = SeedsTrainer(session, resumed, pipelines, writers)
    step = experiment.train_to_end(trainer, writers)
    summaries = []
    for one, workdir, history, pipe in zip(configs, runs, trainer.history, pipelines):
        summary = run_io.run_summary(history, step, trainer.wall_s(), pipe, one, model_config)
        summary.update(checkpoint_s=manager.seconds_blocked, layout="single", devices=1,
                       vmapped_seeds=len(configs), checkpoints=manager.directory)
        run_io.write_json(workdir, "summary.json", summary)
        summaries.append(summary)
        print(f"Seed {one.seed}: test top-1 error {summary['test_top1_error']:.4f}, top-5 "
              f"{summary['test_top5_error']:.4f} after {step} steps; "
              f"{os.path.join(workdir, 'summary.json')}")
    return summaries
