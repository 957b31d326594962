"""The one trainer: TrainState, the pure step functions, and the training loop.

Every model, dataset and layout trains here: ``experiment.train_and_evaluate`` assembles
a run and hands it to ``Trainer``; benchmarks, seeds and figures use the steps and the
state directly.  The step functions are pure (``train_step``, ``eval_step``);
``make_steps`` jit-compiles them for one run, closed over that run's model (its layout's
``apply``) and optimiser, so the state holds arrays only.  ``Trainer.train`` is the loop;
what a run does around it (files, the console, signals) is ``run_io.py``'s.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, NoReturn

import flax.struct
import jax
import jax.numpy as jnp
import optax

from alexnet_jax import (
    checkpoints,
    evaluation,
    input_pipeline,
    metrics,
    optim,
    parallel,
    run_io,
    supervisor,
)
from alexnet_jax.layers import compiler_options


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
        return metrics.cross_entropy(logits, batch["label"]).mean(), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, param_updates),
                              opt_state=opt_state,
                              batch_stats=updates.get("batch_stats", state.batch_stats))
    return new_state, {"loss": loss, **metrics.error_rates(logits, batch["label"]),
                       "learning_rate": optim.current_learning_rate(state.opt_state)}


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
    sums = metrics.masked_sums(logits[:, center_view if views > 1 else 0], labels, mask)
    if views > 1:
        averaged = jnp.log(jnp.mean(jax.nn.softmax(logits), axis=1))
        ten_crop = metrics.masked_sums(averaged, labels, mask)
        sums.update({metrics.TEN_CROP + k: v for k, v in ten_crop.items() if k != "count"})
    return sums


class Steps(NamedTuple):
    """The run's jit-compiled steps."""

    train: Callable[[TrainState, Any], tuple[TrainState, dict]]
    eval: Callable[[TrainState, Any], dict]


def make_steps(layout: parallel.Layout, tx: optax.GradientTransformation,
               center_view: int = 0, augmentation: Any = None, over_seeds: bool = False
               ) -> Steps:
    """``train_step`` and ``eval_step`` for one run: closed over the layout's ``apply``, the
    optimiser and the input's on-device augmentation, jit-compiled with the backend's
    compiler options (``layers.compiler_options``).  ``over_seeds``: vmapped over a leading
    seed axis of the states and the training batches, every seed evaluating the same
    batch (``seeds.py``)."""
    step = functools.partial(train_step, apply_fn=layout.apply, tx=tx,
                             augmentation=augmentation)
    evaluate = functools.partial(eval_step, apply_fn=layout.apply, center_view=center_view,
                                 augmentation=augmentation)
    if over_seeds:
        step, evaluate = jax.vmap(step), jax.vmap(evaluate, in_axes=(0, None))
    options = compiler_options() or None
    return Steps(train=jax.jit(step, donate_argnums=0, compiler_options=options),
                 eval=jax.jit(evaluate, compiler_options=options))


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
    """What one session of training works with, fixed while it trains; ``started``: when
    it started (``time.time()``)."""

    config: Any
    pipeline: input_pipeline.Pipeline
    layout: parallel.Layout
    steps: Steps
    manager: checkpoints.CheckpointManager
    writer: metrics.MetricWriter
    stop: run_io.StopSignals
    started: float


class Trainer:
    """The loop, and what it changes: the state, the plateau policy, the evaluations."""

    def __init__(self, session: Session, resumed: checkpoints.Resumed):
        self.session, self.config, self.pipeline = session, session.config, session.pipeline
        self.state, self.plateau, self.history, self.wall_before = resumed
        self.steps_per_epoch = session.pipeline.steps_per_epoch
        self.progress = run_io.Progress(self.config.progress_bar,
                                        self.steps_per_epoch * self.config.num_epochs,
                                        self.current_step())
        self.window: list[dict] = []  # the steps' metrics since the last log
        self.window_start = time.time()

    def wall_s(self) -> float:
        return self.wall_before + time.time() - self.session.started

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
            self.state, step_metrics = self.session.steps.train(
                self.state, self.session.layout.shard_batch(batch))
            self.window.append(step_metrics)
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
        self.stop_at(step)

    def batches(self, step: int) -> Iterator[dict]:
        for epoch in range(step // self.steps_per_epoch, self.config.num_epochs):
            yield from self.pipeline.train_batches(epoch, start_step=step % self.steps_per_epoch)
            step = 0

    def log(self, step: int) -> None:
        if self.window:
            record = self.log_run(step, self.window, self.session.writer)
            self.progress.update(len(self.window), record)
            self.window, self.window_start = [], time.time()

    def log_run(self, step: int, window: list[dict], writer: metrics.MetricWriter,
                which: str = "") -> dict[str, float]:
        """Writes one run's training metrics, the means over ``window``'s steps; a
        non-finite or blown-up loss among them stops the run, naming its step (and
        ``which`` run), with the checkpoints it made unsound set aside."""
        window = jax.device_get(window)  # one transfer for the check and the means
        try:
            metrics.check_diverged(window, step, self.pipeline.num_classes, which)
        except metrics.Diverged as diverged:
            advice = self.session.manager.set_aside_diverged(diverged.step)
            raise metrics.Diverged(f"{diverged} {advice}", diverged.step) from None
        record = metrics.training_record(window, step / self.steps_per_epoch,
                                         self.config.batch_size, time.time() - self.window_start)
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
        try:
            return evaluation.evaluate_splits(
                self.session.steps.eval, self.state, self.pipeline, self.config.eval_batch_size,
                self.session.layout, self.session.stop.interrupts_evaluation)
        except evaluation.EvaluationInterrupted:
            self.stop_at(step)

    def checkpoint(self, step: int) -> None:
        self.session.manager.save(
            step, self.state, self.plateau, self.history, self.wall_s(),
            self.history[-1]["selection_top1_error"] if self.evaluated_at(step) else None)
        self.window_start = time.time()

    def stop_at(self, step: int) -> NoReturn:
        """Saves ``step`` and ends the session there: a stop was asked for."""
        self.checkpoint(step)
        raise run_io.TrainingInterrupted.at(step, self.session.stop.received,
                                            self.session.manager.directory)
