"""TrainState and the pure step functions every run trains with.

``train_step`` and ``eval_step`` are pure; ``make_steps`` jit-compiles them for one run,
closed over that run's model (its layout's ``apply``) and optimiser, so the state holds
arrays only.  The loop that calls them is ``loop.py``'s; benchmarks and figures use the
steps and the state directly.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from alexnet_jax.model import layouts
from alexnet_jax.model.layers import compiler_options
from alexnet_jax.training import metrics, optim
from alexnet_jax.training.objective import Objective


@flax.struct.dataclass
class TrainState:
    """What a training step changes, as arrays: the step, parameters, BatchNorm
    statistics, optimiser state (with the learning-rate scale), the run's key, and with
    ``optim.ema_decay`` the weights' moving average (``ema``: {"params", "batch_stats"};
    None without).

    Dropout keys are ``fold_in(rng, step)``: reproducible from the seed, and no two
    steps share a mask.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    ema: Any = None


def averaged(state: TrainState) -> TrainState:
    """The state with the moving average's weights in place of the trained ones: what an
    evaluation of the averaged weights runs on."""
    return state.replace(params=state.ema["params"], batch_stats=state.ema["batch_stats"])


def starting_average(params: Any, batch_stats: Any) -> Any:
    """A moving average that starts at these weights: a copy (the training step donates
    the state's buffers, and one buffer cannot be donated twice)."""
    return jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats})


def moving_average(ema: Any, params: Any, batch_stats: Any, decay: float) -> Any:
    """ema <- decay ema + (1 - decay) weights, for the parameters and BatchNorm's
    statistics."""
    return jax.tree.map(lambda average, now: decay * average + (1.0 - decay) * now, ema,
                        {"params": params, "batch_stats": batch_stats})


def variables_of(state: TrainState, params: Any) -> dict[str, Any]:
    """The model's variables: ``params`` and the state's BatchNorm statistics, if any."""
    if state.batch_stats:
        return {"params": params, "batch_stats": state.batch_stats}
    return {"params": params}


def train_step(state: TrainState, batch: dict[str, jax.Array], *, apply_fn: Callable,
               tx: optax.GradientTransformation, augmentation: Any = None,
               objective: Objective = Objective(), ema_decay: float = 0.0
               ) -> tuple[TrainState, dict]:
    """One optimiser step on a batch, minimising ``objective``'s mean over it; returns the
    new state and the batch's metrics (``loss``: the objective's).  ``augmentation``: the
    input pipeline's part that runs here (None: none); ``ema_decay``: the moving
    average's, where the state keeps one."""
    dropout_key = jax.random.fold_in(state.rng, state.step)
    images = batch["image"] if augmentation is None else augmentation.train(batch)

    def loss_fn(params):
        logits, updates = apply_fn(variables_of(state, params), images, train=True,
                                   rngs={"dropout": dropout_key}, mutable=["batch_stats"])
        return objective(logits, batch["label"]).mean(), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, param_updates),
                              opt_state=opt_state,
                              batch_stats=updates.get("batch_stats", state.batch_stats))
    if state.ema is not None:
        new_state = new_state.replace(ema=moving_average(
            state.ema, new_state.params, new_state.batch_stats, ema_decay))
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


def make_steps(layout: layouts.Layout, tx: optax.GradientTransformation,
               center_view: int = 0, augmentation: Any = None, over_seeds: bool = False,
               objective: Objective = Objective(), ema_decay: float = 0.0) -> Steps:
    """``train_step`` and ``eval_step`` for one run: closed over the layout's ``apply``, the
    optimiser, the objective (``objective.Objective.from_config``), the moving average's
    decay (``optim.ema_decay``) and the input's on-device augmentation, jit-compiled
    with the backend's compiler options (``layers.compiler_options``).  ``over_seeds``:
    vmapped over a leading seed axis of the states and the training batches, every seed
    evaluating the same batch (``seeds.py``).

    The training step donates its input state: its buffers are reused for the new state,
    so the state passed in is deleted.  Keep only what it returns (``jax.device_get`` or
    ``jax.tree.map(jnp.copy, state)`` first, to keep the old one)."""
    step = functools.partial(train_step, apply_fn=layout.apply, tx=tx,
                             augmentation=augmentation, objective=objective,
                             ema_decay=ema_decay)
    evaluate = functools.partial(eval_step, apply_fn=layout.apply, center_view=center_view,
                                 augmentation=augmentation)
    if over_seeds:
        step, evaluate = jax.vmap(step), jax.vmap(evaluate, in_axes=(0, None))
    options = compiler_options() or None
    return Steps(train=jax.jit(step, donate_argnums=0, compiler_options=options),
                 eval=jax.jit(evaluate, compiler_options=options))


def create_train_state(seed: int, layout: layouts.Layout, tx: optax.GradientTransformation,
                       ema: bool = False) -> TrainState:
    """The state at step 0, placed on ``layout``'s devices; with ``ema``, a moving average
    of the weights that starts at them.

    Initialised on one device whatever the layout (``layouts.initial_variables``), so
    that every layout (and every process of a multi-host run) starts from the very
    same parameters.
    """
    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
    variables = layouts.initial_variables(layout.model.config, init_key)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                       opt_state=tx.init(params), rng=run_key,
                       ema=starting_average(params, batch_stats) if ema else None)
    return layout.place_state(state, tx)
