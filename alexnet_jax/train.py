"""The one trainer: TrainState, the pure step functions, and the training loop.

Every model, dataset and layout goes through ``train_and_evaluate(config, workdir)``;
sweeps, benchmarks and figures call it or its pieces.  The step functions are pure
(``train_step``, ``eval_step``); ``make_steps`` jit-compiles them for one run, closed
over that run's model (its layout's ``apply``) and optimiser, so the state holds arrays
only.  ``Trainer.train`` is the loop; what a run does around it (files, the console,
signals) is ``run_io.py``'s.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
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
    supervisor,
)
from alexnet_jax.layers import compiler_options
from alexnet_jax.metrics import (
    TEN_CROP,
    MetricWriter,
    cross_entropy,
    first_non_finite,
    mean_metrics,
    topk_correct,
)


@flax.struct.dataclass
class TrainState:
    """What a training step changes, as arrays: the step, parameters, BatchNorm
    statistics, optimiser state (with the learning-rate scale) and the run's key.

    Dropout keys are ``fold_in(rng, step)``: reproducible from the seed, and no two
    steps share a mask.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def variables_of(state: TrainState, params: Any) -> dict[str, Any]:
    """The model's variables: ``params`` and the state's BatchNorm statistics, if any."""
    if state.batch_stats:
        return {"params": params, "batch_stats": state.batch_stats}
    return {"params": params}


def train_step(state: TrainState, batch: dict[str, jax.Array], *, apply_fn: Callable,
               tx: optax.GradientTransformation, augmentation: Any = None
               ) -> tuple[TrainState, dict]:
    """One SGD step on a batch; returns the new state and the batch's metrics.
    ``augmentation``: the input pipeline's part that runs here (None: none)."""
    dropout_key = jax.random.fold_in(state.rng, state.step)
    images = batch["image"] if augmentation is None else augmentation.train(batch)

    def loss_fn(params):
        logits, updates = apply_fn(variables_of(state, params), images, train=True,
                                   rngs={"dropout": dropout_key}, mutable=["batch_stats"])
        return cross_entropy(logits, batch["label"]).mean(), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, param_updates),
                              opt_state=opt_state,
                              batch_stats=updates.get("batch_stats", state.batch_stats))
    metrics = {"loss": loss,
               "top1_error": 1.0 - topk_correct(logits, batch["label"], 1).mean(),
               "top5_error": 1.0 - topk_correct(logits, batch["label"], 5).mean(),
               "learning_rate": optim.current_learning_rate(state.opt_state)}
    return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, apply_fn: Callable,
              center_view: int = 0, augmentation: Any = None) -> dict[str, jax.Array]:
    """Sums over the batch's real examples (``mask`` 1), so padded batches count right.

    Images of shape (batch, views, H, W, C) are several views of each image (the paper's
    10 patches): the metrics are those of the centre view (``center_view``), and the
    ``TEN_CROP`` ones those of the softmax averaged over the views, as the paper did.
    """
    images = batch["image"] if augmentation is None else augmentation.eval(batch)
    labels, mask = batch["label"], batch["mask"]
    views = images.shape[1] if images.ndim == 5 else 1
    flat = images.reshape(-1, *images.shape[-3:])
    logits = apply_fn(variables_of(state, state.params), flat, train=False)
    logits = logits.reshape(images.shape[0], views, -1)
    sums = _masked_sums(logits[:, center_view if views > 1 else 0], labels, mask)
    if views > 1:
        averaged = jnp.log(jnp.mean(jax.nn.softmax(logits), axis=1))
        sums.update({TEN_CROP + k: v for k, v in _masked_sums(averaged, labels, mask).items()
                     if k != "count"})
    return sums


def _masked_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    return {"loss": jnp.sum(cross_entropy(logits, labels) * mask),
            "top1_correct": jnp.sum(topk_correct(logits, labels, 1) * mask),
            "top5_correct": jnp.sum(topk_correct(logits, labels, 5) * mask),
            "count": jnp.sum(mask)}


class Steps(NamedTuple):
    """The run's jit-compiled steps."""

    train: Callable[[TrainState, Any], tuple[TrainState, dict]]
    eval: Callable[[TrainState, Any], dict]


def make_steps(layout: parallel.Layout, tx: optax.GradientTransformation,
               center_view: int = 0, augmentation: Any = None) -> Steps:
    """``train_step`` and ``eval_step`` for one run: closed over the layout's ``apply``, the
    optimiser and the input's on-device augmentation, jit-compiled with the backend's
    compiler options (``layers.compiler_options``)."""
    options = compiler_options() or None
    return Steps(
        train=jax.jit(functools.partial(train_step, apply_fn=layout.apply, tx=tx,
                                        augmentation=augmentation),
                      donate_argnums=0, compiler_options=options),
        eval=jax.jit(functools.partial(eval_step, apply_fn=layout.apply, center_view=center_view,
                                       augmentation=augmentation),
                     compiler_options=options))


def create_optimizer(config: Any, model_config: models.ModelConfig, steps_per_epoch: int
                     ) -> optax.GradientTransformation:
    dummy = jax.ShapeDtypeStruct((1, *model_config.input_shape), jnp.float32)
    params = jax.eval_shape(models.AlexNet(model_config).init, jax.random.key(0), dummy)["params"]
    return optim.optimizer_from_config(config.optim, params, steps_per_epoch, config.num_epochs)


def create_train_state(seed: int, layout: parallel.Layout,
                       tx: optax.GradientTransformation) -> TrainState:
    """The state at step 0, placed on ``layout``'s devices.

    Initialised on one device whatever the layout (``parallel.initial_variables``), so
    that every layout (and every process of a multi-host run) starts from the very
    same parameters.
    """
    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
    variables = parallel.initial_variables(layout.model.config, init_key)
    params = variables["params"]
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                       rng=run_key)
    return layout.place_state(state, tx)


@dataclasses.dataclass(frozen=True)
class Session:
    """What one session of training works with, fixed while it trains."""

    config: Any
    pipeline: input_pipeline.Pipeline
    layout: parallel.Layout
    steps: Steps
    manager: checkpoints.CheckpointManager
    writer: MetricWriter
    stop: run_io.StopSignals


class Trainer:
    """The loop, and what it changes: the state, the plateau policy, the evaluations."""

    def __init__(self, session: Session, state: TrainState, plateau: optim.PlateauPolicy,
                 history: list[dict], wall_before: float, started: float):
        self.session, self.state, self.plateau, self.history = session, state, plateau, history
        self.config, self.pipeline = session.config, session.pipeline
        self.steps_per_epoch = session.pipeline.steps_per_epoch
        self.started, self.wall_before = started, wall_before
        self.progress = run_io.Progress(self.config.progress_bar,
                                        self.steps_per_epoch * self.config.num_epochs,
                                        self.current_step())
        self.window: list[dict] = []  # the steps' metrics since the last log
        self.window_start = time.time()

    def wall_s(self) -> float:
        return self.wall_before + time.time() - self.started

    def current_step(self) -> int:
        return int(self.state.step)

    def evaluated_at(self, step: int) -> bool:
        return bool(self.history) and self.history[-1]["step"] == step

    def evaluation_due(self, step: int) -> bool:
        epoch, config = step // self.steps_per_epoch, self.config
        return step > 0 and step % self.steps_per_epoch == 0 and (
            epoch % config.eval_every_epochs == 0 or epoch == config.num_epochs)

    def train(self) -> int:
        """Trains to the end of the last epoch; returns the step reached.  After each step,
        in this order: log the metrics (also before a checkpoint, whose state must have
        had a finite loss), evaluate at the end of an evaluation epoch, checkpoint every
        ``checkpoint.every_steps`` and at each epoch's end.  A stop (``run_io.StopSignals``)
        is taken between steps, at a step every process agrees on, with a checkpoint."""
        step = self.current_step()
        if self.evaluation_due(step) and not self.evaluated_at(step):
            self.evaluate(step)  # one a stop cut short: the resumed run evaluates first
            self.checkpoint(step)
        batches = self.batches(step)
        while not self.session.stop.stop_here(step):
            batch = next(batches, None)
            if batch is None:
                return step
            self.state, metrics = self.session.steps.train(
                self.state, self.session.layout.shard_batch(batch))
            self.window.append(metrics)
            step += 1
            supervisor.report(str(step))
            checkpoint_due = (self.session.manager.should_save(step)
                              or step % self.steps_per_epoch == 0)
            if step % self.config.log_every_steps == 0 or checkpoint_due:
                self.log(step)
            if self.evaluation_due(step):
                self.evaluate(step)
            if checkpoint_due:
                self.checkpoint(step)
        self.log(step)
        self.checkpoint(step)
        self.interrupt(step)

    def batches(self, step: int) -> Iterator[dict]:
        for epoch in range(step // self.steps_per_epoch, self.config.num_epochs):
            yield from self.pipeline.train_batches(epoch, start_step=step % self.steps_per_epoch)
            step = 0

    def log(self, step: int) -> None:
        if self.window:
            record = self.log_run(step, self.window, self.session.writer)
            self.progress.update(len(self.window), record)
            self.window, self.window_start = [], time.time()

    def log_run(self, step: int, window: list[dict], writer: MetricWriter,
                which: str = "") -> dict[str, float]:
        """Writes one run's training metrics, the means over ``window``'s steps; a
        non-finite loss among them stops the run, naming its step (and ``which`` run)."""
        bad = first_non_finite(window)
        if bad is not None:
            first = step - len(window) + 1 + bad
            loss = float(jax.device_get(window[bad]["loss"]))
            raise FloatingPointError(
                f"Training loss{which} became {loss} at step {first}; stopping. Nothing from "
                "that step on was saved: the run's checkpoints are those before it. Lower the "
                "learning rate, or check the data.")
        means = mean_metrics(window)
        record = {"epoch": step / self.steps_per_epoch,
                  **{f"train_{k}": v for k, v in means.items() if k != "learning_rate"},
                  "learning_rate": means["learning_rate"],
                  "images_per_s": len(window) * self.config.batch_size
                  / (time.time() - self.window_start)}
        writer.write(step, record)
        return record

    def evaluate(self, step: int) -> None:
        """Every evaluation split (validation where held out, then test); the plateau policy
        and "best" read the validation error where there is one."""
        results, = self.evaluate_splits(step)
        entry = evaluation.record(step, step // self.steps_per_epoch, results, self.history,
                                  self.session.writer, self.state.params)
        if self.config.optim.schedule == "plateau" and \
                self.plateau.update(entry["selection_top1_error"]):
            self.state = self.state.replace(opt_state=optim.scale_learning_rate(
                self.state.opt_state, self.plateau.factor))
        self.window_start = time.time()

    def evaluate_splits(self, step: int) -> list[dict[str, dict]]:
        """Per run, each evaluation split's scores; a stop during them saves and stops
        (the resumed run evaluates first)."""
        per_split = {}
        try:
            for split in self.pipeline.evaluation_splits:
                per_split[split] = evaluation.evaluate(
                    self.session.steps.eval, self.state,
                    self.pipeline.eval_batches(self.config.eval_batch_size, split),
                    self.session.layout, self.session.stop.interrupts_evaluation)
        except evaluation.EvaluationInterrupted:
            self.checkpoint(step)
            self.interrupt(step)
        runs = len(per_split["test"])
        return [{split: scores[run] for split, scores in per_split.items()} for run in range(runs)]

    def checkpoint(self, step: int) -> None:
        self.session.manager.save(
            step, self.state, self.plateau, self.history, self.wall_s(),
            self.history[-1]["selection_top1_error"] if self.evaluated_at(step) else None)
        self.window_start = time.time()

    def interrupt(self, step: int) -> None:
        signum = self.session.stop.received
        raise run_io.TrainingInterrupted(
            f"Stopped by {run_io.signal_name(signum)} at step {step}; its checkpoint is in "
            f"{self.session.manager.directory}. Run the same command again to resume.", signum)


def train_and_evaluate(config: Any, workdir: str,
                       stop_deadline_s: float = run_io.STOP_DEADLINE_S) -> dict[str, Any]:
    """Trains ``config``'s experiment in ``workdir`` (resuming what is there), evaluates it,
    and writes ``summary.json``; returns the summary.  A signal stops it within
    ``stop_deadline_s`` (``run_io.StopSignals``).

    Nothing in the workdir changes before the config has been checked, the data read and
    the checkpoint being resumed found to fit the config: a rejected command leaves an
    existing run as it was."""
    config_base.validate(config, jax.device_count(), jax.process_count())
    with run_io.StopSignals(stop_deadline_s, checkpoints.directory_of(workdir)) as stop:
        return _train_and_evaluate(config, workdir, stop)


def _train_and_evaluate(config: Any, workdir: str, stop: run_io.StopSignals) -> dict[str, Any]:
    started = time.time()
    run_io.check_workdir(workdir)
    pipeline = input_pipeline.create_pipeline(config, jax.process_index(), jax.process_count())
    stop.check("while reading the data; nothing was changed")
    model_config = models.config_from(config.model, pipeline.image_shape, pipeline.num_classes)
    layout = parallel.create(config.parallelism, model_config, config.num_devices,
                             config.model.implementation, config.model.sync_batch_stats)
    tx = create_optimizer(config, model_config, pipeline.steps_per_epoch)
    steps = make_steps(layout, tx, pipeline.center_view, pipeline.device)
    manager = checkpoints.CheckpointManager(workdir, config)
    state, plateau, history, wall_before = manager.resume(
        create_train_state(config.seed, layout, tx), optim.PlateauPolicy.from_config(config.optim),
        config.restore_from)
    step = int(state.step)
    if config.eval_only:
        manager.close()
        if not step and not config.restore_from:
            raise checkpoints.CheckpointError(
                f"eval_only: no checkpoint in {manager.directory} and no restore_from given.")
        return evaluation.evaluate_only(steps.eval, state, pipeline, config, workdir, layout)
    stop.check("during start-up; nothing was changed")
    writer = run_io.open_run(workdir, config, model_config, step)
    print(f"{config.model.variant} AlexNet on {config.data.dataset}: {pipeline.num_train} "
          f"training examples, {pipeline.steps_per_epoch} steps/epoch x {config.num_epochs} "
          f"epochs, batch {config.batch_size}; {layout.describe(config.batch_size)}.")
    trainer = Trainer(Session(config, pipeline, layout, steps, manager, writer, stop),
                      state, plateau, history, wall_before, started)
    try:
        step = trainer.train()
    finally:
        trainer.progress.close()
        manager.close()
        if step == pipeline.steps_per_epoch * config.num_epochs:
            writer.finished()
        writer.close()
    summary = run_io.run_summary(trainer.history, step, trainer.wall_s(), pipeline, config,
                                 model_config)
    summary.update(checkpoint_s=manager.seconds_blocked,  # this session's, for the overhead
                   layout=layout.kind, devices=layout.num_devices)
    run_io.write_json(workdir, "summary.json", summary)
    print(f"Test top-1 error {summary['test_top1_error']:.4f}, top-5 "
          f"{summary['test_top5_error']:.4f} after {step} steps; {workdir}/summary.json")
    return summary
