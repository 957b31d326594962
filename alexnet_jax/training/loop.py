"""The training loop: ``Trainer`` trains one run, or several seeds of one experiment as
one vmapped program, to the end of its last epoch, logging, evaluating and checkpointing
as it goes.

What it works with is ``Session`` (fixed while it trains); what it trains is ``Run``s,
each with its own data order, metric writer, evaluations and plateau policy.  With
several seeds (``Session.over_seeds``, ``seeds.py``) the state and the training batches
carry a leading seed axis; one run's state has none, and its steps are not vmapped.
``experiment.py`` assembles both; the steps it calls are ``train.py``'s.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import jax
import numpy as np

from alexnet_jax import input_pipeline
from alexnet_jax.model import layouts
from alexnet_jax.runtime import checkpoints, console, metric_writer, signals, supervisor
from alexnet_jax.training import evaluation, metrics, optim, train
from alexnet_jax.training.train import Steps


@dataclasses.dataclass(frozen=True)
class Session:
    """What one session of training works with, fixed while it trains: the (first) run's
    config, the layout, the jitted steps (vmapped over seeds where ``over_seeds``), the
    checkpoints, the stop signals, and when it started (``time.time()``)."""

    config: Any
    layout: layouts.Layout
    steps: Steps
    manager: checkpoints.CheckpointManager
    stop: signals.StopSignals
    started: float
    over_seeds: bool = False


@dataclasses.dataclass
class Run:
    """One run the trainer trains: its config, its data, where its metrics go, its
    evaluations so far (``history``) and its plateau policy."""

    config: Any
    pipeline: input_pipeline.Pipeline
    writer: metric_writer.MetricWriter
    history: list[dict]
    plateau: optim.PlateauPolicy


@dataclasses.dataclass
class Plateaus:
    """The plateau policies of seeds trained together, checkpointed as one."""

    policies: list[optim.PlateauPolicy]

    def state_dict(self) -> list[dict[str, Any]]:
        return [policy.state_dict() for policy in self.policies]

    @classmethod
    def from_state_dict(cls, state: list[dict[str, Any]]) -> Plateaus:
        return cls([optim.PlateauPolicy.from_state_dict(one) for one in state])


class Trainer:
    """The loop, and what it changes: the state, and each run's evaluations and plateau
    policy."""

    def __init__(self, session: Session, runs: Sequence[Run], state: Any, wall_before: float):
        self.session, self.config, self.runs = session, session.config, list(runs)
        self.state, self.wall_before = state, wall_before
        self.steps_per_epoch = self.runs[0].pipeline.steps_per_epoch
        self.progress = console.Progress(self.config.progress_bar,
                                         self.steps_per_epoch * self.config.num_epochs,
                                         self.current_step())
        self.window: list[dict] = []  # the steps' metrics since the last log
        self.window_start = time.time()

    def of_run(self, tree: Any, index: int) -> Any:
        """Run ``index``'s part of a tree with a leading seed axis (the tree itself for one
        run)."""
        if not self.session.over_seeds:
            return tree
        return jax.tree.map(lambda leaf: leaf[index], tree)

    def wall_s(self) -> float:
        return self.wall_before + time.time() - self.session.started

    def current_step(self) -> int:
        step = self.state.step
        return int(step[0] if self.session.over_seeds else step)  # seeds step together

    def evaluated_at(self, step: int) -> bool:
        return all(run.history and run.history[-1]["step"] == step for run in self.runs)

    def evaluation_due(self, step: int) -> bool:
        epoch, config = step // self.steps_per_epoch, self.config
        return step > 0 and step % self.steps_per_epoch == 0 and (
            epoch % config.eval_every_epochs == 0 or epoch == config.num_epochs)

    def train_to_end(self) -> int:
        """``train()``; returns the step reached.  However it ends, the progress bar, the
        checkpoints (the last save waited for) and the runs' writers are closed, and runs
        that reached their last step are marked finished."""
        step = self.current_step()
        try:
            step = self.train()
        finally:
            self.progress.close()
            self.session.manager.close()
            for run in self.runs:
                if step == self.steps_per_epoch * self.config.num_epochs:
                    run.writer.finished()
                run.writer.close()
        return step

    def train(self) -> int:
        """Trains to the end of the last epoch; returns the step reached.  After each step,
        in this order: log the metrics (also before a checkpoint, whose state must have
        had a finite loss), evaluate at the end of an evaluation epoch, checkpoint every
        ``checkpoint.every_steps`` and at each epoch's end.  A stop (``signals.StopSignals``)
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
        """The training batches from ``step`` on: the run's own, or each seed's stacked."""
        for epoch in range(step // self.steps_per_epoch, self.config.num_epochs):
            start = step % self.steps_per_epoch
            streams = [run.pipeline.train_batches(epoch, start_step=start) for run in self.runs]
            if not self.session.over_seeds:
                yield from streams[0]
            else:
                for batch in zip(*streams):
                    yield {key: np.stack([one[key] for one in batch]) for key in batch[0]}
            step = 0

    def log(self, step: int) -> None:
        if not self.window:
            return
        window = jax.device_get(self.window)  # one transfer for the check and the means
        records = [self.log_run(step, [self.of_run(metrics_, i) for metrics_ in window], run)
                   for i, run in enumerate(self.runs)]
        self.progress.update(len(self.window), {key: float(np.mean([r[key] for r in records]))
                                                for key in records[0]})
        self.window, self.window_start = [], time.time()

    def log_run(self, step: int, window: list[dict], run: Run) -> dict[str, float]:
        """Writes one run's training metrics, the means over ``window``'s steps; a
        non-finite or blown-up loss among them stops the training, naming its step (and
        the seed, of several), with the checkpoints it made unsound set aside."""
        which = f" of seed {run.config.seed}" if self.session.over_seeds else ""
        try:
            metrics.check_diverged(window, step, run.pipeline.num_classes, which)
        except metrics.Diverged as diverged:
            advice = self.session.manager.set_aside_diverged(diverged.step)
            raise metrics.Diverged(f"{diverged} {advice}", diverged.step) from None
        record = metrics.training_record(window, step / self.steps_per_epoch,
                                         self.config.batch_size, time.time() - self.window_start)
        run.writer.write(step, record)
        return record

    def evaluate(self, step: int) -> None:
        """Every evaluation split (validation where held out, then test) of every run; each
        run's plateau policy and "best" read its validation error where there is one."""
        factors = []
        results = self.evaluate_splits(step, self.state)
        averaged = ([None] * len(self.runs) if self.state.ema is None else
                    self.evaluate_splits(step, train.averaged(self.state)))
        for i, (run, scores, average) in enumerate(zip(self.runs, results, averaged)):
            entry = evaluation.record(step, step // self.steps_per_epoch, scores, run.history,
                                      run.writer, self.of_run(self.state.params, i), average,
                                      self.config.checkpoint.best_by)
            reduce = (self.config.optim.schedule == "plateau"
                      and run.plateau.update(entry["selection_top1_error"]))
            factors.append(run.plateau.factor if reduce else 1.0)
        if any(factor != 1.0 for factor in factors):
            factor = np.asarray(factors, np.float32) if self.session.over_seeds else factors[0]
            self.state = self.state.replace(opt_state=optim.scale_learning_rate(
                self.state.opt_state, factor))
        self.window_start = time.time()

    def evaluate_splits(self, step: int, state: Any) -> list[dict[str, dict]]:
        """Per run, each evaluation split's scores of ``state`` (the trained weights, or
        their moving average: ``train.averaged``), every seed on the first run's batches;
        a stop during them saves and stops (the resumed run evaluates first)."""
        try:
            return evaluation.evaluate_splits(
                self.session.steps.eval, state, self.runs[0].pipeline,
                self.config.eval_batch_size, self.session.layout,
                self.session.stop.interrupts_evaluation)
        except evaluation.EvaluationInterrupted:
            self.stop_at(step)

    def checkpoint(self, step: int) -> None:
        """The state with each run's plateau policy and history; one run's best checkpoint
        is chosen by its selection error (seeds keep no best)."""
        if self.session.over_seeds:
            self.session.manager.save(step, self.state,
                                      Plateaus([run.plateau for run in self.runs]),
                                      [run.history for run in self.runs], self.wall_s())
        else:
            run, = self.runs
            self.session.manager.save(
                step, self.state, run.plateau, run.history, self.wall_s(),
                run.history[-1]["selection_top1_error"] if self.evaluated_at(step) else None)
        self.window_start = time.time()

    def stop_at(self, step: int) -> NoReturn:
        """Saves ``step`` and ends the session there: a stop was asked for."""
        self.checkpoint(step)
        raise signals.TrainingInterrupted.at(step, self.session.stop.received,
                                             self.session.manager.directory)
