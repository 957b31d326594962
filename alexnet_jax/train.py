"""The one trainer: TrainState, the pure step functions, and train_and_evaluate.

Every model, dataset and layout goes through ``train_and_evaluate(config, workdir)``;
sweeps, benchmarks and figures call it or its pieces.  The step functions are pure
(``train_step``, ``eval_step``); ``make_steps`` jit-compiles them for one run, closed
over that run's model (its layout's ``apply``) and optimiser, so the state holds arrays
only.  The loop is a list of periodic actions: log, evaluate, checkpoint, stop.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import tempfile
import threading
import time
from typing import Any, Callable, Iterator, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from alexnet_jax import (checkpoints, config_base, input_pipeline, kernels, models, optim,
                         parallel, visualize)
from alexnet_jax.metrics import MetricWriter, cross_entropy, topk_correct

TEN_CROP = "10crop_"  # the prefix of the metrics of the paper's 10-patch evaluation


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


def _variables(state: TrainState, params: Any) -> dict[str, Any]:
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
        logits, updates = apply_fn(_variables(state, params), images, train=True,
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
    logits = apply_fn(_variables(state, state.params), flat, train=False)
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
    compiler options (``kernels``)."""
    options = kernels.compiler_options() or None
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
    return layout.place(state, state_specs(layout, tx, state))


def state_specs(layout: parallel.Layout, tx: optax.GradientTransformation,
                state: TrainState) -> TrainState:
    """The PartitionSpecs of ``state``: the model's variables by their marks, the
    optimiser's copies of the parameters likewise, everything else replicated."""
    specs = layout.variable_specs
    replicated = jax.sharding.PartitionSpec()
    opt_specs = optax.tree_map_params(
        tx, lambda _, spec: spec, state.opt_state, specs["params"],
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    return TrainState(step=replicated, params=specs["params"],
                      batch_stats=specs["batch_stats"] if state.batch_stats else {},
                      opt_state=opt_specs, rng=replicated)


def evaluate(eval_step: Callable, state: TrainState, batches: Iterator[dict],
             layout: parallel.Layout, stop: Callable[[], bool] = lambda: False
             ) -> dict[str, float]:
    """Loss and errors over ``batches``; raises ``EvaluationInterrupted`` between batches
    once ``stop()`` holds."""
    totals: dict[str, float] = {}
    for batch in batches:
        if stop():
            raise EvaluationInterrupted
        sums = jax.device_get(eval_step(state, layout.shard_batch(batch)))
        for key, value in sums.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    count = totals["count"]
    result = {"examples": int(count)}
    for prefix in ("", TEN_CROP) if TEN_CROP + "loss" in totals else ("",):
        result.update({f"{prefix}loss": totals[f"{prefix}loss"] / count,
                       f"{prefix}top1_error": 1.0 - totals[f"{prefix}top1_correct"] / count,
                       f"{prefix}top5_error": 1.0 - totals[f"{prefix}top5_correct"] / count})
    return result



class EvaluationInterrupted(Exception):
    """A stop was requested during an evaluation, which was abandoned."""


def first_non_finite(window: list[dict]) -> int | None:
    """The index of the first step of ``window`` (per-step metrics) whose loss is not finite."""
    losses = np.asarray(jax.device_get([m["loss"] for m in window]), np.float64)
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else None


def _mean_metrics(history: list[dict]) -> dict[str, float]:
    fetched = jax.device_get(history)
    return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def check_workdir(workdir: str) -> None:
    """That the workdir can be written (created if missing), leaving nothing behind."""
    try:
        os.makedirs(workdir, exist_ok=True)
        # A probe of its own per process: the processes of a multi-host run share the workdir.
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test."):
            pass
    except OSError as error:
        raise PermissionError(f"Cannot write to workdir {workdir!r} ({error.strerror}); choose "
                              "another --workdir or fix its permissions.") from error


def write_config(workdir: str, config: Any) -> None:
    """``config.json``: the resolved config, and its ``config_hash`` (the run's identity
    for sweeps, ``config_base.config_hash``)."""
    if jax.process_index() == 0:
        record = {**json.loads(config.to_json_best_effort()),
                  "config_hash": config_base.config_hash(config)}
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(record, f, indent=2)


class _Progress:
    """A console progress bar with loss, error, images/s and time left (tqdm)."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, steps: int, metrics: dict[str, float] | None = None) -> None:
        if self.bar is None:
            return
        self.bar.update(steps)
        if metrics:
            self.bar.set_postfix(loss=f"{metrics['train_loss']:.3f}",
                                 err=f"{metrics['train_top1_error']:.3f}",
                                 img_s=f"{metrics['images_per_s']:.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT arrived; the latest checkpoint is complete and the run resumes."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """Turns SIGTERM and SIGINT into a request to stop at the next safe point: after the
    current step, between evaluation batches, or between the steps of start-up."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def check(self, where: str) -> None:
        """Raises ``TrainingInterrupted`` if a signal arrived (before any checkpoint)."""
        if self.received is not None:
            raise TrainingInterrupted(f"Stopped by {signal.Signals(self.received).name} "
                                      f"{where}.", self.received)


def _truncate_metrics(workdir: str, step: int) -> None:
    """Drops records written after ``step`` by a run that died before its next checkpoint,
    so that the resumed run's records follow on without duplicates."""
    path = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() != 0 or not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path + ".tmp", "w") as f:
        f.writelines(lines)
    os.replace(path + ".tmp", path)


# The hyperparameters every run declares for TensorBoard's HParams view, and its results.
HPARAMS = ("model.variant", "model.norm", "model.norm_position", "model.pool",
           "model.activation", "model.towers", "model.dropout_rate", "optim.learning_rate",
           "optim.schedule", "batch_size", "num_epochs", "seed")
HPARAM_METRICS = ("test_top1_error", "test_top5_error", "test_loss", "validation_top1_error",
                  "validation_loss", "train_loss", "train_top1_error")


def hyperparameters(config: Any, model_config: models.ModelConfig) -> dict[str, Any]:
    """``HPARAMS`` as plain values, the model's resolved where the config leaves them unset,
    and the normalisation's own settings (``components.Norm.options``)."""
    values = {}
    for key in HPARAMS:
        value = config
        for part in key.split("."):
            value = value[part]
        if value is None:
            value = getattr(model_config, key.split(".")[-1])
        values[key] = value
    values.update({f"model.{key}": value for key, value in model_config.norm_options})
    return values


@dataclasses.dataclass
class Periodic:
    """An action of the training loop, taken after every step where ``due(step)`` holds."""

    name: str
    due: Callable[[int], bool]
    run: Callable[[int], None]


class _TrainingRun:
    """One session of training: the state, what has been logged, and the loop's actions."""

    def __init__(self, config: Any, pipeline: Any, layout: parallel.Layout, steps: Steps,
                 manager: checkpoints.CheckpointManager, state: TrainState,
                 plateau: optim.PlateauPolicy, history: list[dict], writer: MetricWriter,
                 wall_before: float, start_time: float, stop: StopSignals):
        self.config, self.pipeline, self.layout = config, pipeline, layout
        self.steps, self.manager, self.stop, self.writer = steps, manager, stop, writer
        self.state, self.plateau, self.history = state, plateau, history
        self.steps_per_epoch = pipeline.steps_per_epoch
        self.start_time, self.wall_before = start_time, wall_before
        self.progress = _Progress(config.progress_bar, self.steps_per_epoch * config.num_epochs,
                                  int(state.step))
        self.window: list[dict] = []
        self.window_start = time.time()

    def wall_s(self) -> float:
        return self.wall_before + time.time() - self.start_time

    def end_of_epoch(self, step: int) -> bool:
        return step % self.steps_per_epoch == 0

    def evaluation_due(self, step: int) -> bool:
        epoch = step // self.steps_per_epoch
        return step > 0 and self.end_of_epoch(step) and (
            epoch % self.config.eval_every_epochs == 0 or epoch == self.config.num_epochs)

    def actions(self) -> list[Periodic]:
        """In this order after a step: log the training metrics (also before a checkpoint,
        whose state must have a finite loss), evaluate at the end of evaluation epochs,
        checkpoint, and stop when a signal asked for it."""
        config, every = self.config, self.config.checkpoint.every_steps

        def checkpoint_due(step: int) -> bool:
            return bool(every and step % every == 0) or self.end_of_epoch(step) \
                or self.stop.received is not None

        return [
            Periodic("log", lambda step: step % config.log_every_steps == 0
                     or checkpoint_due(step), self.log),
            Periodic("evaluate", self.evaluation_due, self.evaluate),
            Periodic("checkpoint", checkpoint_due, self.checkpoint),
            Periodic("stop", lambda step: self.stop.received is not None, self.interrupt),
        ]

    def batches(self) -> Iterator[dict]:
        step = int(self.state.step)
        for epoch in range(step // self.steps_per_epoch, self.config.num_epochs):
            yield from self.pipeline.train_batches(epoch, start_step=step % self.steps_per_epoch)
            step = 0

    def train(self) -> int:
        """Trains to the end of the last epoch; returns the step reached."""
        actions = self.actions()
        step = int(self.state.step)
        if self.evaluation_due(step) and not (self.history and self.history[-1]["step"] == step):
            self.evaluate(step)  # one a stop cut short: the resumed run evaluates first
            self.checkpoint(step)
        for batch in self.batches():
            self.state, metrics = self.steps.train(self.state, self.layout.shard_batch(batch))
            self.window.append(metrics)
            step += 1
            for action in actions:
                if action.due(step):
                    action.run(step)
        return step

    def log(self, step: int) -> None:
        if not self.window:
            return
        bad = first_non_finite(self.window)
        if bad is not None:
            first = step - len(self.window) + 1 + bad
            loss = float(jax.device_get(self.window[bad]["loss"]))
            raise FloatingPointError(
                f"Training loss became {loss} at step {first}; stopping. Nothing from that "
                "step on was saved: the run's checkpoints are those before it. Lower the "
                "learning rate, or check the data.")
        means = _mean_metrics(self.window)
        elapsed = time.time() - self.window_start
        record = {"epoch": step / self.steps_per_epoch,
                  **{f"train_{k}": v for k, v in means.items() if k != "learning_rate"},
                  "learning_rate": means["learning_rate"],
                  "images_per_s": len(self.window) * self.config.batch_size / elapsed}
        self.writer.write(step, record)
        self.progress.update(len(self.window), record)
        self.window, self.window_start = [], time.time()

    def evaluate(self, step: int) -> None:
        """Every evaluation split (validation where held out, then test); the plateau policy
        and "best" read the validation error where there is one."""
        epoch = step // self.steps_per_epoch
        stop = lambda: self.stop.received is not None  # noqa: E731
        results = {}
        try:
            for split in self.pipeline.evaluation_splits:
                results[split] = evaluate(self.steps.eval, self.state, self.pipeline.eval_batches(
                    self.config.eval_batch_size, split), self.layout, stop)
        except EvaluationInterrupted:
            self.checkpoint(step)  # without this evaluation: the resumed run does it first
            self.interrupt(step)
        test = results["test"]
        entry = {"step": step, "epoch": epoch, **test,
                 **{f"validation_{k}": v for k, v in results.get("validation", {}).items()}}
        entry["selection_top1_error"] = results.get("validation", test)["top1_error"]
        self.history.append(entry)
        self.writer.write(step, {"epoch": epoch, **{f"{split}_{k}": v for split in results
                                                    for k, v in results[split].items()}})
        kernels = np.asarray(jax.device_get(self.state.params["towers"]["conv1"]["kernel"]))
        self.writer.image(step, "conv1_kernels", visualize.figure_pixels(
            visualize.conv1_figure(kernels, step)))
        if self.config.optim.schedule == "plateau" and \
                self.plateau.update(entry["selection_top1_error"]):
            self.state = self.state.replace(opt_state=optim.scale_learning_rate(
                self.state.opt_state, self.plateau.factor))
        self.window_start = time.time()

    def checkpoint(self, step: int) -> None:
        self.manager.save(step, self.state, self.plateau, self.history, self.wall_s())
        self.window_start = time.time()

    def interrupt(self, step: int) -> None:
        name = signal.Signals(self.stop.received).name
        raise TrainingInterrupted(
            f"Stopped by {name} at step {step}; its checkpoint is in {self.manager.directory}. "
            "Run the same command again to resume.", self.stop.received)

    def close(self) -> None:
        self.progress.close()


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
    """Trains ``config``'s experiment in ``workdir`` (resuming what is there), evaluates it,
    and writes ``summary.json``; returns the summary.

    Nothing in the workdir changes before the config has been checked, the data read and
    the checkpoint being resumed found to fit the config: a rejected command leaves an
    existing run as it was."""
    config_base.validate(config, jax.device_count(), jax.process_count())
    with StopSignals() as stop:
        return _train_and_evaluate(config, workdir, stop)


def _train_and_evaluate(config: Any, workdir: str, stop: StopSignals) -> dict[str, Any]:
    start_time = time.time()
    check_workdir(workdir)
    pipeline = input_pipeline.create_pipeline(config, jax.process_index(), jax.process_count())
    stop.check("while reading the data; nothing was changed")
    model_config = models.config_from(config.model, pipeline.image_shape, pipeline.num_classes)
    layout = parallel.create(config.parallelism, model_config, config.num_devices,
                             config.model.implementation, config.model.sync_batch_stats)
    tx = create_optimizer(config, model_config, pipeline.steps_per_epoch)
    steps = make_steps(layout, tx, pipeline.center_view, pipeline.device)
    manager = checkpoints.CheckpointManager(workdir, config)
    try:
        state, plateau, history, wall_before = manager.restore_or_keep(
            create_train_state(config.seed, layout, tx),
            optim.PlateauPolicy.from_config(config.optim))
    except checkpoints.CheckpointError:
        manager.close()
        raise
    step = int(state.step)
    for name in manager.remove_unfinished():
        print(f"Removed {name}, a checkpoint a killed save left unfinished.")
    if step:
        print(f"Resuming from the checkpoint of step {step} in {manager.directory}.")
    elif config.restore_from:
        state = state.replace(**checkpoints.load_weights(config.restore_from, state))
        print(f"Starting from the weights in {config.restore_from}.")
    if config.eval_only:
        manager.close()
        if not step and not config.restore_from:
            raise checkpoints.CheckpointError(
                f"eval_only: no checkpoint in {manager.directory} and no restore_from given.")
        return _evaluate_only(steps, state, pipeline, config, workdir, layout)
    stop.check("during start-up; nothing was changed")
    write_config(workdir, config)
    _truncate_metrics(workdir, step)  # also a run killed before its first checkpoint
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    writer.text("config", "```\n" + config.to_json_best_effort(indent=2) + "\n```")
    writer.hyperparameters(hyperparameters(config, model_config), HPARAM_METRICS)
    print(f"{config.model.variant} AlexNet on {config.data.dataset}: {pipeline.num_train} "
          f"training examples, {pipeline.steps_per_epoch} steps/epoch x {config.num_epochs} "
          f"epochs, batch {config.batch_size}; {layout.describe(config.batch_size)}.")
    run = _TrainingRun(config, pipeline, layout, steps, manager, state, plateau, history,
                       writer, wall_before, start_time, stop)
    try:
        step = run.train()
    finally:
        run.close()
        manager.close()
        if step == pipeline.steps_per_epoch * config.num_epochs:
            writer.finished()
        writer.close()
    summary = _summary(run.history, step, run.wall_s(), pipeline, config)
    summary["checkpoint_s"] = manager.seconds_blocked  # this session's, for the overhead
    summary["config_hash"] = config_base.config_hash(config)
    summary["layout"], summary["devices"] = layout.kind, layout.num_devices
    norm_layers = models.norm_facts(model_config)  # what they resolved, e.g. a group count
    if norm_layers:
        summary["norm_layers"] = norm_layers
    _write_json(workdir, "summary.json", summary)
    print(f"Test top-1 error {summary['test_top1_error']:.4f}, top-5 "
          f"{summary['test_top5_error']:.4f} after {step} steps; {workdir}/summary.json")
    return summary


def _write_json(workdir: str, name: str, record: dict[str, Any]) -> None:
    if jax.process_index() == 0:  # the primary process writes for all
        with open(os.path.join(workdir, name), "w") as f:
            json.dump(record, f, indent=1)


def _evaluate_only(steps: Steps, state: TrainState, pipeline: Any, config: Any, workdir: str,
                   layout: parallel.Layout) -> dict[str, Any]:
    result = {"step": int(state.step)}
    for split in pipeline.evaluation_splits:
        scores = evaluate(steps.eval, state, pipeline.eval_batches(config.eval_batch_size, split),
                          layout)
        result.update({f"{split}_{k}": v for k, v in scores.items()})
    _write_json(workdir, "eval.json", result)
    print(f"Step {result['step']}: test top-1 error {result['test_top1_error']:.4f}, top-5 "
          f"{result['test_top5_error']:.4f}; {workdir}/eval.json")
    return result


def _summary(history: list[dict], step: int, wall_s: float, pipeline: Any,
             config: Any) -> dict[str, Any]:
    """The final evaluation, and the best one by the selection error (validation where
    there is a validation split; test otherwise)."""
    final = history[-1]
    best = min(history, key=lambda h: h["selection_top1_error"])
    ten_crop = {f"test_{k}": v for k, v in final.items() if k.startswith(TEN_CROP)}
    validation = {k: v for k, v in final.items() if k.startswith("validation_")}
    return {"test_top1_error": final["top1_error"], "test_top5_error": final["top5_error"],
            **ten_crop, **validation,
            "test_loss": final["loss"], "test_examples": final["examples"],
            "best_test_top1_error": best["top1_error"], "best_test_top5_error": best["top5_error"],
            "best_epoch": best["epoch"], "best_selection_top1_error":
            best["selection_top1_error"], "steps": step, "epochs": config.num_epochs,
            "wall_s": wall_s, "train_examples": pipeline.num_train,
            "platform": jax.default_backend()}
