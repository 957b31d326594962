"""The one trainer: TrainState, the pure step functions, and train_and_evaluate.

Every model, dataset and layout goes through ``train_and_evaluate(config, workdir)``;
sweeps, benchmarks and figures call it or its pieces.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import tempfile
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state

from alexnet_jax import checkpoints, input_pipeline, ops, optim, parallel
from alexnet_jax.input_pipeline.imagenet import CENTER_VIEW
from alexnet_jax.metrics import MetricWriter, cross_entropy, topk_correct
from alexnet_jax.models import AlexNet, model_from_config


class TrainState(train_state.TrainState):
    """Parameters, optimiser state and step, plus BatchNorm statistics and the run's key.

    Dropout keys are ``fold_in(rng, step)``: reproducible from the seed, and no two
    steps share a mask.
    """

    batch_stats: Any
    rng: jax.Array


def create_train_state(config: Any, model: AlexNet, steps_per_epoch: int,
                       layout: parallel.Layout | None = None) -> TrainState:
    """The state at step 0, placed on ``layout``'s devices (one device if None).

    Initialised on one device whatever the layout, so that every layout (and every
    process of a multi-host run) starts from the very same parameters.
    """
    init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
    dummy = jnp.zeros((1, *model.input_shape), jnp.float32)
    variables = _jitted_init(model)(init_key, dummy)
    params = variables["params"]
    tx = _optimizer(model, config.optim.to_json(), steps_per_epoch, config.num_epochs)
    layout = layout or parallel.create("single", model, 1)
    state = TrainState.create(apply_fn=layout.apply, params=params, tx=tx,
                              batch_stats=variables.get("batch_stats", {}), rng=run_key)
    return layout.place(state)


@functools.lru_cache(maxsize=64)
def _jitted_init(model: AlexNet):
    return jax.jit(model.init)


@functools.lru_cache(maxsize=64)
def _optimizer(model: AlexNet, optim_json: str, steps_per_epoch: int, num_epochs: int):
    """One optax transformation object per (model, settings): the jit cache keys on it."""
    import ml_collections  # here, so that the benchmark can use this module without it
    optim_config = ml_collections.ConfigDict(json.loads(optim_json))
    dummy = jnp.zeros((1, *model.input_shape), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), dummy)["params"]
    return optim.optimizer_from_config(optim_config, params, steps_per_epoch, num_epochs)


def _variables(state: TrainState, params: Any) -> dict[str, Any]:
    if state.batch_stats:
        return {"params": params, "batch_stats": state.batch_stats}
    return {"params": params}


def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
    """One SGD step on a batch; returns the new state and the batch's metrics."""
    dropout_key = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        logits, updates = state.apply_fn(_variables(state, params), batch["image"], train=True,
                                         rngs={"dropout": dropout_key}, mutable=["batch_stats"])
        return cross_entropy(logits, batch["label"]).mean(), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads,
                                      batch_stats=updates.get("batch_stats", state.batch_stats))
    metrics = {"loss": loss,
               "top1_error": 1.0 - topk_correct(logits, batch["label"], 1).mean(),
               "top5_error": 1.0 - topk_correct(logits, batch["label"], 5).mean(),
               "learning_rate": optim.current_learning_rate(state.opt_state)}
    return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Sums over the batch's real examples (``mask`` 1), so padded batches count right.

    Images of shape (batch, views, H, W, C) are several views of each image (the paper's
    10 patches): the metrics are those of the centre view (``CENTER_VIEW``), and the
    ``multi_view_`` ones those of the softmax averaged over the views, as the paper did.
    """
    images, labels, mask = batch["image"], batch["label"], batch["mask"]
    views = images.shape[1] if images.ndim == 5 else 1
    flat = images.reshape(-1, *images.shape[-3:])
    logits = state.apply_fn(_variables(state, state.params), flat, train=False)
    logits = logits.reshape(images.shape[0], views, -1)
    sums = _masked_sums(logits[:, CENTER_VIEW if views > 1 else 0], labels, mask)
    if views > 1:
        averaged = jnp.log(jnp.mean(jax.nn.softmax(logits), axis=1))
        sums.update({f"multi_view_{k}": v for k, v in
                     _masked_sums(averaged, labels, mask).items() if k != "count"})
    return sums


def _masked_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    return {"loss": jnp.sum(cross_entropy(logits, labels) * mask),
            "top1_correct": jnp.sum(topk_correct(logits, labels, 1) * mask),
            "top5_correct": jnp.sum(topk_correct(logits, labels, 5) * mask),
            "count": jnp.sum(mask)}


jit_train_step = ops.jit(train_step, donate_argnums=0)
jit_eval_step = ops.jit(eval_step)


def evaluate(state: TrainState, pipeline: Any, batch_size: int,
             layout: parallel.Layout | None = None) -> dict[str, float]:
    shard = layout.shard_batch if layout else (lambda batch: batch)
    totals: dict[str, float] = {}
    for batch in pipeline.eval_batches(batch_size):
        sums = jax.device_get(jit_eval_step(state, shard(batch)))
        for key, value in sums.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    count = totals["count"]
    result = {"examples": int(count)}
    for prefix in ("", "multi_view_") if "multi_view_loss" in totals else ("",):
        result.update({f"{prefix}loss": totals[f"{prefix}loss"] / count,
                       f"{prefix}top1_error": 1.0 - totals[f"{prefix}top1_correct"] / count,
                       f"{prefix}top5_error": 1.0 - totals[f"{prefix}top5_correct"] / count})
    return result


def _mean_metrics(history: list[dict]) -> dict[str, float]:
    fetched = jax.device_get(history)
    return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def _check_finite(step: int, metrics: dict[str, float]) -> None:
    if not np.isfinite(metrics["loss"]):
        raise FloatingPointError(
            f"Training loss became {metrics['loss']} by step {step}; stopping. The state of that "
            "step was not saved: the last good checkpoint stays. Lower the learning rate, or "
            "check the data.")


def prepare_workdir(workdir: str, config: Any) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        # A probe of its own per process: the processes of a multi-host run share the workdir.
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test."):
            pass
    except OSError as error:
        raise PermissionError(f"Cannot write to workdir {workdir!r} ({error.strerror}); choose "
                              "another --workdir or fix its permissions.") from error
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))


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
    """SIGTERM or SIGINT arrived; a checkpoint was written and the run can be resumed."""


class _StopSignals:
    """Turns SIGTERM and SIGINT into a request to stop after the current step."""

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


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
    """Trains ``config``'s experiment in ``workdir`` (resuming what is there), evaluates it,
    and writes ``summary.json``; returns the summary."""
    prepare_workdir(workdir, config)
    start_time = time.time()
    pipeline = input_pipeline.create_pipeline(config, jax.process_index(), jax.process_count())
    model = model_from_config(config.model, pipeline.image_shape, pipeline.num_classes)
    layout = parallel.create(config.parallelism, model, config.num_devices)
    layout.check_batch(config.batch_size)
    layout.check_batch(config.eval_batch_size, "eval_batch_size")
    steps_per_epoch = pipeline.steps_per_epoch
    total_steps = steps_per_epoch * config.num_epochs
    state = create_train_state(config, model, steps_per_epoch, layout)
    plateau = optim.PlateauPolicy.from_config(config.optim)
    manager = checkpoints.CheckpointManager(workdir, config)
    state, plateau, history, wall_before = manager.restore_or_keep(state, plateau)
    step = int(state.step)
    if not config.eval_only:
        _truncate_metrics(workdir, step)  # also a run killed before its first checkpoint
    if step:
        print(f"Resuming from the checkpoint of step {step} in {manager.directory}.")
    elif config.restore_from:
        state = state.replace(**checkpoints.load_weights(config.restore_from, state))
        print(f"Starting from the weights in {config.restore_from}.")
    if config.eval_only:
        if not step and not config.restore_from:
            raise checkpoints.CheckpointError(
                f"eval_only: no checkpoint in {manager.directory} and no restore_from given.")
        return _evaluate_only(state, pipeline, config, workdir, manager, layout)
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    print(f"{config.model.variant} AlexNet on {config.data.dataset}: {pipeline.num_train} "
          f"training examples, {steps_per_epoch} steps/epoch x {config.num_epochs} epochs, "
          f"batch {config.batch_size}; {layout.describe(config.batch_size)}.")
    progress = _Progress(config.progress_bar, total_steps, step)
    window: list[dict] = []
    window_start = time.time()

    def wall_s() -> float:
        return wall_before + time.time() - start_time

    def log_window() -> None:
        nonlocal window, window_start
        if not window:
            return
        means = _mean_metrics(window)
        _check_finite(step, means)
        elapsed = time.time() - window_start
        record = {"epoch": step / steps_per_epoch,
                  **{f"train_{k}": v for k, v in means.items() if k != "learning_rate"},
                  "learning_rate": means["learning_rate"],
                  "images_per_s": len(window) * config.batch_size / elapsed}
        writer.write(step, record)
        progress.update(len(window), record)
        window, window_start = [], time.time()

    try:
        with _StopSignals() as stop:
            for epoch in range(step // steps_per_epoch, config.num_epochs):
                for batch in pipeline.train_batches(epoch, start_step=step % steps_per_epoch):
                    state, metrics = jit_train_step(state, layout.shard_batch(batch))
                    window.append(metrics)
                    step += 1
                    end_of_epoch = step % steps_per_epoch == 0
                    save = manager.should_save(step) and not end_of_epoch
                    if save or end_of_epoch or step % config.log_every_steps == 0 or stop.received:
                        log_window()  # also checks the loss before anything is saved
                    if save or (stop.received and not end_of_epoch):
                        manager.save(step, state, plateau, history, wall_s())
                    if stop.received and not end_of_epoch:
                        raise TrainingInterrupted(_interrupted_message(stop.received, step, manager))
                if (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == config.num_epochs:
                    test = evaluate(state, pipeline, config.eval_batch_size, layout)
                    history.append({"step": step, "epoch": epoch + 1, **test})
                    writer.write(step, {"epoch": epoch + 1,
                                        **{f"test_{k}": v for k, v in test.items()}})
                    if config.optim.schedule == "plateau":
                        scale = plateau.update(test["top1_error"])
                        state = state.replace(opt_state=optim.with_lr_scale(state.opt_state, scale))
                manager.save(step, state, plateau, history, wall_s())
                if stop.received:
                    raise TrainingInterrupted(_interrupted_message(stop.received, step, manager))
                window_start = time.time()
    finally:
        progress.close()
        manager.close()
        writer.close()
    summary = _summary(history, step, wall_s(), pipeline, config)
    summary["checkpoint_s"] = manager.seconds_blocked  # this session's, for the overhead
    summary["layout"], summary["devices"] = layout.kind, layout.num_devices
    _write_json(workdir, "summary.json", summary)
    print(f"Test top-1 error {summary['test_top1_error']:.4f}, top-5 "
          f"{summary['test_top5_error']:.4f} after {step} steps; {workdir}/summary.json")
    return summary


def _write_json(workdir: str, name: str, record: dict[str, Any]) -> None:
    if jax.process_index() == 0:  # the primary process writes for all
        with open(os.path.join(workdir, name), "w") as f:
            json.dump(record, f, indent=1)


def _interrupted_message(signum: int, step: int, manager: Any) -> str:
    return (f"Stopped by {signal.Signals(signum).name} at step {step}; its checkpoint is in "
            f"{manager.directory}. Run the same command again to resume.")


def _evaluate_only(state: TrainState, pipeline: Any, config: Any, workdir: str,
                   manager: Any, layout: parallel.Layout) -> dict[str, Any]:
    manager.close()
    test = evaluate(state, pipeline, config.eval_batch_size, layout)
    result = {"step": int(state.step), **{f"test_{k}": v for k, v in test.items()}}
    _write_json(workdir, "eval.json", result)
    print(f"Step {result['step']}: test top-1 error {result['test_top1_error']:.4f}, top-5 "
          f"{result['test_top5_error']:.4f}; {workdir}/eval.json")
    return result


def _summary(history: list[dict], step: int, wall_s: float, pipeline: Any,
             config: Any) -> dict[str, Any]:
    final = history[-1]
    best = min(history, key=lambda h: h["top1_error"])
    multi_view = {f"test_10crop_{k[len('multi_view_'):]}": v for k, v in final.items()
                  if k.startswith("multi_view_")}
    return {"test_top1_error": final["top1_error"], "test_top5_error": final["top5_error"],
            **multi_view,
            "test_loss": final["loss"], "test_examples": final["examples"],
            "best_test_top1_error": best["top1_error"], "best_test_top5_error": best["top5_error"],
            "best_epoch": best["epoch"], "steps": step, "epochs": config.num_epochs,
            "wall_s": wall_s, "train_examples": pipeline.num_train,
            "platform": jax.default_backend()}
