"""Helpers the tests share: tiny configs, a run's pieces built as the trainer builds them,
LRN by the paper's formula, the FFI handlers a lowering calls, checkpoint helpers, sweep
files and finished runs planted for a sweep to find."""
import json
import os
import re
from typing import Any, NamedTuple

import jax
import numpy as np

from alexnet_jax.model import layouts, networks
from alexnet_jax.runtime import checkpoints
from alexnet_jax.training import optim, train
from alexnet_jax.training.config_base import base_config
from alexnet_jax.training.objective import Objective

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, "data")  # make data puts Fashion-MNIST here
HAVE_FASHION_MNIST = os.path.exists(os.path.join(DATA_DIR, "fashion-mnist",
                                                 "train-images-idx3-ubyte.gz"))


def tiny_config(epochs: int = 2, every_steps: int = 2, data_dir: str = "/nonexistent",
                train_examples: int = 96, test_examples: int = 40, batch: int = 32) -> Any:
    """The small model on (mock or real) Fashion-MNIST, a few steps per epoch."""
    config = base_config()
    config.model.variant = "small"
    config.data.data_dir = data_dir
    config.data.max_train_examples = train_examples
    config.data.max_test_examples = test_examples
    config.data.shuffle_buffer = 512
    config.batch_size = batch
    config.eval_batch_size = 40
    config.num_epochs = epochs
    config.log_every_steps = 1
    config.progress_bar = False
    config.optim.schedule = "plateau"
    config.optim.plateau_patience = 1
    config.checkpoint.every_steps = every_steps
    config.checkpoint.async_save = False
    return config


def trainer_config(data_dir: str = "/nonexistent", train_examples: int = 128, epochs: int = 1,
                   batch: int = 32) -> Any:
    """``tiny_config`` with a constant rate, asynchronous saves and no checkpoint inside an
    epoch: a run the trainer carries through as a user's."""
    config = tiny_config(epochs, 0, data_dir, train_examples, 100, batch)
    config.eval_batch_size = 64
    config.log_every_steps = 2
    config.optim.schedule = "constant"
    config.checkpoint.async_save = True
    config.checkpoint.every_steps = 1000
    return config


class Run(NamedTuple):
    layout: layouts.Layout
    tx: Any
    steps: train.Steps
    state: train.TrainState


def build(config: Any, steps_per_epoch: int = 10, parallelism: str = "single",
          num_devices: int = 0) -> Run:
    """The layout, optimiser, jitted steps and initial state of ``config`` on 28x28x1 images
    of 10 classes, without data."""
    model_config = networks.config_from(config.model, (28, 28, 1), 10)
    layout = layouts.create(parallelism, model_config, num_devices, config.model.implementation,
                             config.model.sync_batch_stats)
    tx = optim.create_optimizer(config, model_config, steps_per_epoch)
    steps = train.make_steps(layout, tx, objective=Objective.from_config(config),
                             ema_decay=config.optim.ema_decay)
    state = train.create_train_state(config.seed, layout, tx, ema=config.optim.ema_decay > 0)
    return Run(layout, tx, steps, state)


def jitted_apply(model: Any, **static: Any):
    """``model.apply`` compiled once for the keyword arguments ``static`` (``train``,
    ``mutable``): eagerly, every operation of the network is dispatched, and compiled, on
    its own, which costs a test tens of seconds."""
    return jax.jit(lambda variables, x, **rngs: model.apply(variables, x, **static, **rngs))


def lrn_numpy(a, k, n, alpha, beta):
    """The paper's formula in float64, one channel at a time."""
    a = np.asarray(a, np.float64)
    channels = a.shape[-1]
    out = []
    for c in range(channels):
        lo, hi = max(0, c - n // 2), min(channels - 1, c + (n - 1) // 2)
        s = np.sum(a[..., lo:hi + 1] ** 2, axis=-1)
        out.append(a[..., c] / (k + alpha * s) ** beta)
    return np.stack(out, axis=-1)


def lowered_calls(function, *args) -> set[str]:
    """The FFI targets that ``function``'s lowering for ``args`` calls."""
    return set(re.findall(r"custom_call @(\w+)", jax.jit(function).lower(*args).as_text()))


def final_params(workdir):
    config = tiny_config()
    manager = checkpoints.CheckpointManager(workdir, config)
    restored, plateau, history, _ = manager.restore_or_keep(build(config, 3).state,
                                                            optim.PlateauPolicy())
    manager.close()
    return jax.device_get(restored.params), plateau, history


def wrap_train_step(monkeypatch, wrapper):
    """Makes every run's train step ``wrapper(step)`` (train.make_steps builds them)."""
    make_steps = train.make_steps
    monkeypatch.setattr(train, "make_steps", lambda *args, **kwargs: (
        lambda steps: steps._replace(train=wrapper(steps.train)))(make_steps(*args, **kwargs)))


class StopAt:
    """Wraps the train step to deliver a signal to this process after ``step`` steps."""

    def __init__(self, step, sig, original):
        self.step, self.sig, self.calls = step, sig, 0
        self.original = original

    def __call__(self, state, batch):
        result = self.original(state, batch)
        self.calls += 1
        if self.calls == self.step:
            os.kill(os.getpid(), self.sig)
        return result


def accumulation_pair(parallelism: str = "single", num_devices: int = 0,
                      accumulate: int = 4, batch: int = 32) -> tuple[Any, Any]:
    """The parameters after one update of the small network (no dropout, LRN: nothing but
    the batch differs between its examples) from a batch of ``batch``, and after
    ``accumulate`` steps over its slices of ``batch // accumulate`` with
    ``optim.accumulate_steps``; with the initial parameters."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, 28, 28, 1)).astype(np.float32)
    labels = rng.integers(0, 10, batch).astype(np.int32)
    results = []
    for steps in (1, accumulate):
        config = tiny_config()
        config.model.dropout_rate = 0.0
        config.optim.schedule = "constant"
        config.optim.accumulate_steps = steps
        run = build(config, parallelism=parallelism, num_devices=num_devices)
        initial = jax.device_get(run.state.params)
        state, size = run.state, batch // steps
        for i in range(steps):
            rows = slice(i * size, (i + 1) * size)
            part = {"image": images[rows], "label": labels[rows]}
            state, _ = run.steps.train(state, run.layout.shard_batch(part))
        results.append(jax.device_get(state.params))
    return results[0], results[1], initial


def files_under(directory):
    return sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, _, names in os.walk(directory) for name in names)


# A sweep of the small model: the baseline and one other variant, two seeds.
SMALL_SWEEP = ("def get_sweep():\n"
               "    return {'base': 'experiments/fashion_mnist.py', 'seeds': [0, 1],\n"
               "            'variants': [('lrn', {}), ('other', {OTHER})],\n"
               "            'overrides': {'num_epochs': 1}{EXTRA}}\n")


def sweep_file(tmp_path, variant="'model.norm': 'none'", extra="", name="small.py"):
    """A sweep file of ``SMALL_SWEEP`` in ``tmp_path``, its other variant ``variant``."""
    path = tmp_path / name
    path.write_text(SMALL_SWEEP.replace("OTHER", variant).replace("{EXTRA}", extra))
    return str(path)


def fake_run(workdir, run, top1, curve, train_errors, validation=None):
    path = os.path.join(workdir, run.name)
    os.makedirs(path)
    json.dump({"test_top1_error": top1, "test_top5_error": top1 / 10,
               "validation_top1_error": validation,
               "best_test_top1_error": top1, "best_test_top5_error": top1 / 10,
               "wall_s": 100.0, "steps": 40}, open(os.path.join(path, "summary.json"), "w"))
    config = base_config()
    config.model.variant = "small"
    open(os.path.join(path, "config.json"), "w").write(config.to_json())
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for step, error in train_errors:
            f.write(json.dumps({"step": step, "train_top1_error": error}) + "\n")
        for epoch, error in curve:
            f.write(json.dumps({"step": 20 * epoch, "epoch": epoch,
                                "test_top1_error": error}) + "\n")
