"""Helpers the tests share: tiny configs, a run's pieces built as the trainer builds them,
LRN by the paper's formula, and the FFI handlers a lowering calls."""
import re
from typing import Any, NamedTuple

import jax
import numpy as np

from alexnet_jax import models, optim, parallel, train
from alexnet_jax.config_base import base_config


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


class Run(NamedTuple):
    layout: parallel.Layout
    tx: Any
    steps: train.Steps
    state: train.TrainState


def build(config: Any, steps_per_epoch: int = 10, parallelism: str = "single",
          num_devices: int = 0) -> Run:
    """The layout, optimiser, jitted steps and initial state of ``config`` on 28x28x1 images
    of 10 classes, without data."""
    model_config = models.config_from(config.model, (28, 28, 1), 10)
    layout = parallel.create(parallelism, model_config, num_devices, config.model.implementation,
                             config.model.sync_batch_stats)
    tx = optim.create_optimizer(config, model_config, steps_per_epoch)
    return Run(layout, tx, train.make_steps(layout, tx), train.create_train_state(config.seed,
                                                                                    layout, tx))


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
