"""The paper's SGD as an optax chain, and the learning-rate policies.

The paper's update rule (Section 5):

    v <- momentum * v - weight_decay * lr * w - lr * grad
    w <- w + v

Weight decay is *coupled*: added to the gradient and scaled by the learning rate,
and the learning rate is applied *before* the momentum trace, so a change of
learning rate leaves the velocity already accumulated untouched (optax.sgd applies
it after the trace, which rescales the velocity too).  The paper decays every
weight; ``decay_biases_and_norms=False`` decays only conv and fc kernels.

The learning rate is ``schedule(step) * lr_scale``.  ``lr_scale`` lives in the
optimiser state, and only there (so it is checkpointed with it); the paper's plateau
policy decides after an evaluation when to divide it by 10.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from alexnet_jax.model import networks

SCHEDULES = ("plateau", "step", "cosine", "linear", "constant")
DECAYS_TO_ZERO = ("cosine", "linear")  # the schedules that take ``warmup_epochs``


def paper_sgd(learning_rate: float, lr_scale: float = 1.0, momentum: float = 0.9,
              weight_decay: float = 0.0005, decay_mask: Any = None) -> optax.GradientTransformation:
    """v <- momentum v - weight_decay lr w - lr g; w <- w + v, with
    lr = learning_rate * lr_scale."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=decay_mask),
        optax.scale_by_learning_rate(learning_rate * lr_scale),
        optax.trace(decay=momentum),
    )


def kernels_only_mask(params: Any) -> Any:
    """True for conv and fc kernels; False for biases and normalisation parameters."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def schedule_from_config(optim: Any, steps_per_epoch: int, num_epochs: int) -> Callable:
    """The learning rate as a function of the step, before the plateau scale."""
    base = optim.learning_rate
    if optim.schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {optim.schedule!r}; valid schedules are: "
                         f"{', '.join(SCHEDULES)}.")
    if optim.schedule in ("plateau", "constant"):
        return optax.constant_schedule(base)
    if optim.schedule == "step":
        boundaries = {int(e * steps_per_epoch): 0.1 for e in optim.step_epochs}
        return optax.piecewise_constant_schedule(base, boundaries)
    # DECAYS_TO_ZERO: a linear warmup, then down to 0 at the last step.
    total = max(1, num_epochs * steps_per_epoch)
    warmup = int(optim.warmup_epochs * steps_per_epoch)
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0 if warmup else base, base, warmup, total)
    decay = optax.linear_schedule(base, 0.0, total - warmup)
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), decay], [warmup])


def optimizer_from_config(optim: Any, params: Any, steps_per_epoch: int,
                          num_epochs: int) -> optax.GradientTransformation:
    mask = None if optim.decay_biases_and_norms else kernels_only_mask(params)
    factory = optax.inject_hyperparams(paper_sgd, static_args=("decay_mask",))
    return factory(learning_rate=schedule_from_config(optim, steps_per_epoch, num_epochs),
                   lr_scale=1.0, momentum=optim.momentum, weight_decay=optim.weight_decay,
                   decay_mask=mask)


def create_optimizer(config: Any, model_config: networks.ModelConfig, steps_per_epoch: int
                     ) -> optax.GradientTransformation:
    """``config.optim``'s optimiser for ``model_config``'s network, over ``config.num_epochs``
    epochs of ``steps_per_epoch`` steps (the parameters' shapes say which are kernels)."""
    dummy = jax.ShapeDtypeStruct((1, *model_config.input_shape), jnp.float32)
    params = jax.eval_shape(networks.AlexNet(model_config).init, jax.random.key(0), dummy)["params"]
    return optimizer_from_config(config.optim, params, steps_per_epoch, config.num_epochs)


def current_learning_rate(opt_state: Any) -> jax.Array:
    hyper = opt_state.hyperparams
    return hyper["learning_rate"] * hyper["lr_scale"]


def lr_scale(opt_state: Any) -> jax.Array:
    return opt_state.hyperparams["lr_scale"]


def scale_learning_rate(opt_state: Any, factor: float) -> Any:
    """The optimiser state with its learning-rate scale multiplied by ``factor``."""
    hyper = dict(opt_state.hyperparams)
    hyper["lr_scale"] = hyper["lr_scale"] * jnp.asarray(factor, hyper["lr_scale"].dtype)
    return opt_state._replace(hyperparams=hyper)


@dataclasses.dataclass
class PlateauPolicy:
    """The paper's policy: divide the learning rate by 10 when the validation error
    stops improving, at most 3 times.

    ``update(error)`` is called after each evaluation and says whether to multiply the
    learning rate by ``factor`` now.  An evaluation improves when its error is below the
    best so far by more than ``min_delta``; after ``patience`` evaluations in a row
    without improvement the rate is reduced (at most ``max_reductions`` times) and the
    count starts again.  The rate itself lives in the optimiser state.
    """

    factor: float = 0.1
    patience: int = 1
    min_delta: float = 0.0
    max_reductions: int = 3
    best: float = float("inf")
    evals_without_improvement: int = 0
    reductions: int = 0

    def update(self, error: float) -> bool:
        if error < self.best - self.min_delta:
            self.best = error
            self.evals_without_improvement = 0
            return False
        self.evals_without_improvement += 1
        if (self.evals_without_improvement >= self.patience
                and self.reductions < self.max_reductions):
            self.reductions += 1
            self.evals_without_improvement = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PlateauPolicy:
        """Also reads checkpoints written when the policy kept a copy of the scale."""
        return cls(**{k: v for k, v in state.items() if k != "scale"})

    @classmethod
    def from_config(cls, optim: Any) -> PlateauPolicy:
        return cls(factor=optim.plateau_factor, patience=optim.plateau_patience,
                   min_delta=optim.plateau_min_delta, max_reductions=optim.plateau_max_reductions)
