"""One experiment end to end: ``train_and_evaluate(config, workdir)``, the entry every
model, dataset and layout goes through (``main.py``, sweeps, figures and tests).

``train_runs`` assembles what trains, one run or several seeds vmapped as one program
(``seeds.py``), in an order that keeps a rejected command harmless: the data read, the
model, layout, optimiser and jitted steps built, and the checkpoint being resumed found
to fit them, all before anything in a workdir changes (the config was validated and the
workdirs found writable and locked before).  Then each run's files are opened
(``run_record.open_run``), ``loop.Trainer`` trains to the end, and each run's
``summary.json`` is written.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from alexnet_jax import input_pipeline
from alexnet_jax.model import layouts, networks
from alexnet_jax.runtime import checkpoints, process, run_files, signals
from alexnet_jax.runtime.workdir_lock import WorkdirLock
from alexnet_jax.training import config_base, evaluation, loop, optim, run_record, train
from alexnet_jax.training.objective import Objective


@dataclasses.dataclass(frozen=True)
class Parts:
    """What a config builds for data of one shape: the network, its layout, the optimiser."""

    model_config: networks.ModelConfig
    layout: layouts.Layout
    tx: optax.GradientTransformation


def build(config: Any, pipeline: input_pipeline.Pipeline, parallelism: str | None = None
          ) -> Parts:
    """The network for ``pipeline``'s images and classes, laid out as ``parallelism``
    (default: the config's), and its optimiser."""
    model_config = networks.config_from(config.model, pipeline.image_shape, pipeline.num_classes)
    layout = layouts.create(parallelism or config.parallelism, model_config, config.num_devices,
                             config.model.implementation, config.model.sync_batch_stats)
    tx = optim.create_optimizer(config, model_config, pipeline.steps_per_epoch)
    return Parts(model_config, layout, tx)


def train_and_evaluate(config: Any, workdir: str,
                       stop_deadline_s: float = signals.STOP_DEADLINE_S) -> dict[str, Any]:
    """Trains ``config``'s experiment in ``workdir`` (resuming what is there), evaluates it,
    and writes ``summary.json``; returns the summary.  A signal stops it within
    ``stop_deadline_s`` (``signals.StopSignals``), with a checkpoint to resume from."""
    config_base.validate(config, jax.device_count(), jax.process_count())
    run_files.check_workdir(workdir)
    with WorkdirLock(workdir, enabled=jax.process_index() == 0), \
            signals.StopSignals(stop_deadline_s, checkpoints.directory_of(workdir)) as stop:
        if config.eval_only:
            return evaluate_checkpoint(config, workdir, stop)
        summary, = train_runs([config], [workdir], workdir, stop)
        return summary


def stack(trees: Sequence[Any]) -> Any:
    """Trees stacked leaf by leaf along a new leading (seed) axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def evaluate_checkpoint(config: Any, workdir: str, stop: signals.StopSignals
                        ) -> dict[str, Any]:
    """``eval_only``: the scores of ``workdir``'s checkpoint (or ``restore_from``'s) in
    ``eval.json``."""
    assembled = _assemble([config], workdir, stop)
    assembled.manager.close()
    if not int(assembled.resumed.state.step) and not config.restore_from:
        raise checkpoints.CheckpointError(
            f"eval_only: no checkpoint in {assembled.manager.directory} and no restore_from "
            "given.")
    return evaluation.evaluate_only(assembled.steps.eval, assembled.resumed.state,
                                    assembled.pipelines[0], config, workdir,
                                    assembled.parts.layout)


@dataclasses.dataclass(frozen=True)
class _Assembled:
    """What trains or evaluates, up to the state it starts from."""

    pipelines: list[input_pipeline.Pipeline]
    parts: Parts
    steps: train.Steps
    manager: checkpoints.CheckpointManager
    resumed: checkpoints.Resumed


def _assemble(configs: Sequence[Any], checkpoints_workdir: str, stop: signals.StopSignals,
              over_seeds: bool = False) -> _Assembled:
    """The data read, the network, layout, optimiser and jitted steps built, and the
    state found (``_resume``): nothing in a workdir changed yet."""
    config = configs[0]
    pipelines = [input_pipeline.create_pipeline(one, jax.process_index(), jax.process_count())
                 for one in configs]
    stop.check("while reading the data; nothing was changed")
    parts = build(config, pipelines[0])
    steps = train.make_steps(parts.layout, parts.tx, pipelines[0].center_view,
                             pipelines[0].device, over_seeds=over_seeds,
                             objective=Objective.from_config(config),
                             ema_decay=config.optim.ema_decay)
    manager = checkpoints.CheckpointManager(checkpoints_workdir, config)
    fresh = [train.create_train_state(one.seed, parts.layout, parts.tx,
                                      ema=one.optim.ema_decay > 0) for one in configs]
    policies = [optim.PlateauPolicy.from_config(one.optim) for one in configs]
    return _Assembled(pipelines, parts, steps, manager,
                      _resume(manager, fresh, policies, config, over_seeds))


def _resume(manager: checkpoints.CheckpointManager, fresh: Sequence[Any],
            policies: Sequence[optim.PlateauPolicy], config: Any, over_seeds: bool
            ) -> checkpoints.Resumed:
    """Where the runs start: their newest checkpoint; else (one run) ``restore_from``'s
    weights; else the fresh states.  Where the config keeps a moving average and the
    weights came without one (``restore_from``'s, or a checkpoint written without it),
    the average starts at those weights."""
    if over_seeds:  # seeds refuse restore_from (seeds.py)
        resumed = manager.resume(stack(fresh), loop.Plateaus(policies))
    else:
        resumed = manager.resume(fresh[0], policies[0], config.restore_from)
    state = resumed.state
    if fresh[0].ema is not None and state.ema is None:
        state = state.replace(ema=train.starting_average(state.params, state.batch_stats))
    return resumed._replace(state=state)


def train_runs(configs: Sequence[Any], workdirs: Sequence[str], checkpoints_workdir: str,
               stop: signals.StopSignals, over_seeds: bool = False) -> list[dict[str, Any]]:
    """Trains the runs of ``configs`` (one, or several seeds of one experiment vmapped as
    one program where ``over_seeds``), each writing its own run in its workdir, with their
    checkpoints in ``checkpoints_workdir``; returns each run's summary."""
    started, config = time.time(), configs[0]
    resumes = [run_record.resume_changes(workdir, one, checkpoints_workdir)
               for one, workdir in zip(configs, workdirs)]
    checkpoints.check_latest_beside_best(checkpoints_workdir)
    assembled = _assemble(configs, checkpoints_workdir, stop, over_seeds)
    pipelines, parts, manager, resumed = (assembled.pipelines, assembled.parts,
                                          assembled.manager, assembled.resumed)
    pipeline, layout = pipelines[0], parts.layout
    if over_seeds:
        histories = resumed.history or [[] for _ in configs]
        policies = resumed.plateau.policies
    else:
        histories, policies = [resumed.history], [resumed.plateau]
    step = int(resumed.state.step[0] if over_seeds else resumed.state.step)
    resumes = [run_record.say_changes(workdir, changes if step else [])
               for workdir, changes in zip(workdirs, resumes)]
    stop.check("during start-up; nothing was changed")
    writers = [run_record.open_run(workdir, one, parts.model_config, step, changes)
               for one, workdir, changes in zip(configs, workdirs, resumes)]
    print(_starting(configs, pipeline, layout, over_seeds))
    runs = [loop.Run(*run) for run in zip(configs, pipelines, writers, histories, policies)]
    session = loop.Session(config, layout, assembled.steps, manager, stop, started,
                           over_seeds)
    trainer = loop.Trainer(session, runs, resumed.state, resumed.wall_s)
    step = trainer.train_to_end()
    summaries = []
    for run, workdir, changes in zip(runs, workdirs, resumes):
        summary = run_record.run_summary(run.history, step, trainer.wall_s(), run.pipeline,
                                         run.config, parts.model_config, changes)
        summary.update(checkpoint_s=manager.seconds_blocked,  # this session's, for the overhead
                       layout=layout.kind, devices=layout.num_devices,
                       # this session's process before the run began (imports, checks)
                       **({"start_s": started - begun} if (begun := process.started_at())
                          else {}))
        if over_seeds:
            summary.update(vmapped_seeds=len(configs), checkpoints=manager.directory)
        run_files.write_json(workdir, "summary.json", summary)
        summaries.append(summary)
        print(f"{f'Seed {run.config.seed}: test' if over_seeds else 'Test'} top-1 error "
              f"{summary['test_top1_error']:.4f}, top-5 {summary['test_top5_error']:.4f} after "
              f"{step} steps; {os.path.join(workdir, 'summary.json')}")
    return summaries


def _starting(configs: Sequence[Any], pipeline: input_pipeline.Pipeline,
              layout: layouts.Layout, over_seeds: bool) -> str:
    """The line that says what is about to train."""
    config = configs[0]
    batch = f"batch {config.batch_size}"
    if config.optim.accumulate_steps > 1:
        batch += (f" x {config.optim.accumulate_steps} accumulated ("
                  f"{run_record.effective_batch_size(config)} an update)")
    if not over_seeds:
        return (f"{config.model.variant} AlexNet on {config.data.dataset}: {pipeline.num_train} "
                f"training examples, {pipeline.steps_per_epoch} steps/epoch x "
                f"{config.num_epochs} epochs, {batch}; {layout.describe(config.batch_size)}.")
    return (f"{len(configs)} seeds ({', '.join(str(one.seed) for one in configs)}) of "
            f"{config.model.variant} AlexNet on {config.data.dataset}, vmapped in one program: "
            f"{pipeline.steps_per_epoch} steps/epoch x {config.num_epochs} epochs, {batch} "
            f"each; {layout.describe(config.batch_size)}.")
