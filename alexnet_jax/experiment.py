"""One experiment end to end: ``train_and_evaluate(config, workdir)``, the entry every
model, dataset and layout goes through (``main.py``, sweeps, figures and tests).

It assembles a run from its config, in an order that keeps a rejected command harmless:
the config is validated, the workdir found writable, the data read, the model, layout,
optimiser and jitted steps built, and the checkpoint being resumed found to fit them,
all before anything in the workdir changes.  Then the run's files are opened
(``run_io.open_run``), ``train.Trainer`` trains to the end, and ``summary.json`` is
written.  ``seeds.py`` assembles several seeds trained as one program from the same
pieces (``build``, ``train_to_end``).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import optax

from alexnet_jax import (
    checkpoints,
    config_base,
    evaluation,
    input_pipeline,
    models,
    optim,
    parallel,
    run_io,
    train,
)
from alexnet_jax.metrics import MetricWriter
from alexnet_jax.workdir_lock import WorkdirLock


@dataclasses.dataclass(frozen=True)
class Parts:
    """What a config builds for data of one shape: the network, its layout, the optimiser."""

    model_config: models.ModelConfig
    layout: parallel.Layout
    tx: optax.GradientTransformation


def build(config: Any, pipeline: input_pipeline.Pipeline, parallelism: str | None = None
          ) -> Parts:
    """The network for ``pipeline``'s images and classes, laid out as ``parallelism``
    (default: the config's), and its optimiser."""
    model_config = models.config_from(config.model, pipeline.image_shape, pipeline.num_classes)
    layout = parallel.create(parallelism or config.parallelism, model_config, config.num_devices,
                             config.model.implementation, config.model.sync_batch_stats)
    tx = optim.create_optimizer(config, model_config, pipeline.steps_per_epoch)
    return Parts(model_config, layout, tx)


def train_to_end(trainer: train.Trainer, writers: Sequence[MetricWriter]) -> int:
    """``trainer.train()``; returns the step reached.  However it ends, the progress bar,
    the checkpoints (the last save waited for) and the writers are closed, and a run
    that reached its last step is marked finished."""
    step = trainer.current_step()
    try:
        step = trainer.train()
    finally:
        trainer.progress.close()
        trainer.session.manager.close()
        for writer in writers:
            if step == trainer.steps_per_epoch * trainer.config.num_epochs:
                writer.finished()
            writer.close()
    return step


def train_and_evaluate(config: Any, workdir: str,
                       stop_deadline_s: float = run_io.STOP_DEADLINE_S) -> dict[str, Any]:
    """Trains ``config``'s experiment in ``workdir`` (resuming what is there), evaluates it,
    and writes ``summary.json``; returns the summary.  A signal stops it within
    ``stop_deadline_s`` (``run_io.StopSignals``), with a checkpoint to resume from."""
    config_base.validate(config, jax.device_count(), jax.process_count())
    run_io.check_workdir(workdir)
    with WorkdirLock(workdir, enabled=jax.process_index() == 0), \
            run_io.StopSignals(stop_deadline_s, checkpoints.directory_of(workdir)) as stop:
        return _train_and_evaluate(config, workdir, stop)


def _train_and_evaluate(config: Any, workdir: str, stop: run_io.StopSignals) -> dict[str, Any]:
    started = time.time()
    resumes = run_io.resume_changes(workdir, config)
    if not config.eval_only:
        checkpoints.check_latest_beside_best(workdir)
    pipeline = input_pipeline.create_pipeline(config, jax.process_index(), jax.process_count())
    stop.check("while reading the data; nothing was changed")
    parts = build(config, pipeline)
    layout = parts.layout
    steps = train.make_steps(layout, parts.tx, pipeline.center_view, pipeline.device)
    manager = checkpoints.CheckpointManager(workdir, config)
    resumed = manager.resume(train.create_train_state(config.seed, layout, parts.tx),
                             optim.PlateauPolicy.from_config(config.optim), config.restore_from)
    step = int(resumed.state.step)
    resumes = run_io.say_changes(workdir, resumes if step else [])
    if config.eval_only:
        manager.close()
        if not step and not config.restore_from:
            raise checkpoints.CheckpointError(
                f"eval_only: no checkpoint in {manager.directory} and no restore_from given.")
        return evaluation.evaluate_only(steps.eval, resumed.state, pipeline, config, workdir,
                                        layout)
    stop.check("during start-up; nothing was changed")
    writer = run_io.open_run(workdir, config, parts.model_config, step, resumes)
    print(f"{config.model.variant} AlexNet on {config.data.dataset}: {pipeline.num_train} "
          f"training examples, {pipeline.steps_per_epoch} steps/epoch x {config.num_epochs} "
          f"epochs, batch {config.batch_size}; {layout.describe(config.batch_size)}.")
    trainer = train.Trainer(
        train.Session(config, pipeline, layout, steps, manager, writer, stop, started), resumed)
    step = train_to_end(trainer, [writer])
    summary = run_io.run_summary(trainer.history, step, trainer.wall_s(), pipeline, config,
                                 parts.model_config, resumes)
    summary.update(checkpoint_s=manager.seconds_blocked,  # this session's, for the overhead
                   layout=layout.kind, devices=layout.num_devices)
    run_io.write_json(workdir, "summary.json", summary)
    print(f"Test top-1 error {summary['test_top1_error']:.4f}, top-5 "
          f"{summary['test_top5_error']:.4f} after {step} steps; {workdir}/summary.json")
    return summary
