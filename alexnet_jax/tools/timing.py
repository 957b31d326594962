"""Timing the trainer's own step: the seed's protocol (``burn_in`` untimed calls, then
mean and std), on synthetic batches, with the paper's SGD as the base config sets it.
Used by the benchmark command and by a sweep's cost probe."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from alexnet_jax.model.networks import AlexNet
from alexnet_jax.training import optim, train
from alexnet_jax.training.config_base import base_config


def paper_sgd() -> Any:
    """The base config's optimiser settings (the paper's SGD) at a constant learning rate:
    a timed step's update does not depend on the schedule's position."""
    settings = base_config().optim
    settings.schedule = "constant"
    return settings


def time_run(fn: Callable[[], Any], name: str, steps: int, burn_in: int) -> dict[str, float]:
    """The seed's protocol: ``burn_in`` untimed calls, then mean and std over ``steps``."""
    durations = []
    for i in range(steps + burn_in):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        if i >= burn_in:
            durations.append(time.perf_counter() - start)
    mean = sum(durations) / steps
    std = math.sqrt(max(sum(d * d for d in durations) / steps - mean * mean, 0.0))
    print(f"{name} across {steps} steps, {mean:.3f} +/- {std:.3f} sec / batch", flush=True)
    return {"mean_s": mean, "std_s": std, "steps": steps}


def synthetic_batch(input_shape: Any, num_classes: int, batch: int) -> dict[str, Any]:
    """N(0, 0.1) images and uniform labels, as host arrays."""
    key_images, key_labels = jax.random.split(jax.random.PRNGKey(0))
    images = 0.1 * jax.random.normal(key_images, (batch, *input_shape), jnp.float32)
    labels = jax.random.randint(key_labels, (batch,), 0, num_classes)
    return {"image": jax.device_get(images), "label": jax.device_get(labels)}


def synthetic_training(layout: Any, batch: int) -> tuple[Callable, Any, dict[str, Any]]:
    """(the trainer's own step, ``train.make_steps``; its initial state; a synthetic batch)
    under ``layout``, with the paper's SGD."""
    config = layout.model.config
    data = layout.shard_batch(synthetic_batch(config.input_shape, config.num_classes, batch))
    tx = optim.optimizer_from_config(paper_sgd(), _params_shapes(config), 1, 1)
    return train.make_steps(layout, tx).train, train.create_train_state(0, layout, tx), data


def time_train_step(layout: Any, batch: int, steps: int, burn_in: int,
                    name: str = "Train step") -> dict[str, float]:
    """The trainer's own step (``train.make_steps``) on synthetic data under ``layout``."""
    step, state, data = synthetic_training(layout, batch)
    holder = {"state": state}

    def one_train_step():
        holder["state"], _ = step(holder["state"], data)
        return holder["state"].params

    timing = time_run(one_train_step, name, steps, burn_in)
    return {**timing, "images_per_s": batch / timing["mean_s"]}


def _params_shapes(config: Any) -> Any:
    dummy = jax.ShapeDtypeStruct((1, *config.input_shape), jnp.float32)
    return jax.eval_shape(AlexNet(config).init, jax.random.key(0), dummy)["params"]
