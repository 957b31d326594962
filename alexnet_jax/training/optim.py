"""Optimisers as a registry, the learning-rate schedules, and the paper's plateau policy.

``OPTIMIZERS`` maps ``optim.optimizer`` to an entry: its transformation, its own options
(keys under ``optim`` with their defaults, which the base config, ``config.json``, the
HParams and the benchmark all take from here) and their check.  A new optimiser is one
entry and its tests.  Every entry is built the same way (``optimizer_from_config``):
under ``optax.inject_hyperparams``, with the schedule's rate and the plateau policy's
``lr_scale`` as hyperparameters, so that ``lr_scale`` lives in the optimiser state (and
is checkpointed with it); ``optim.accumulate_steps`` wraps it in ``optax.MultiSteps``.
The learning-rate helpers (``current_learning_rate``, ``lr_scale``,
``scale_learning_rate``) find the injected state inside whatever wraps it.

The paper's update rule (Section 5), ``sgd``:

    v <- momentum * v - weight_decay * lr * w - lr * grad
    w <- w + v

Weight decay is *coupled*: added to the gradient and scaled by the learning rate,
and the learning rate is applied *before* the momentum trace, so a change of
learning rate leaves the velocity already accumulated untouched (optax.sgd applies
it after the trace, which rescales the velocity too).  The paper decays every
weight; ``decay_biases_and_norms=False`` decays only conv and fc kernels (for every
optimiser, and for LARS's trust ratio too).
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


def adamw(learning_rate: float, lr_scale: float = 1.0, adam_b1: float = 0.9,
          adam_b2: float = 0.999, adam_eps: float = 1e-8, weight_decay: float = 0.0005,
          decay_mask: Any = None) -> optax.GradientTransformation:
    """Adam with decoupled weight decay (Loshchilov and Hutter 2019): the decay is
    ``lr * weight_decay * w``, apart from the gradient's moments."""
    return optax.adamw(learning_rate * lr_scale, b1=adam_b1, b2=adam_b2, eps=adam_eps,
                       weight_decay=weight_decay, mask=decay_mask)


def lars(learning_rate: float, lr_scale: float = 1.0, momentum: float = 0.9,
         lars_trust_coefficient: float = 0.001, lars_eps: float = 0.0,
         weight_decay: float = 0.0005, decay_mask: Any = None) -> optax.GradientTransformation:
    """Layer-wise adaptive rate scaling (You, Gitman and Ginsburg 2017, who trained AlexNet
    at batch 8K with it): each layer's step is scaled by ``trust_coefficient * |w| /
    |g + weight_decay w|``, then momentum; the parameters ``decay_mask`` leaves out get
    neither the decay nor the trust ratio."""
    mask = True if decay_mask is None else decay_mask
    return optax.lars(learning_rate * lr_scale, weight_decay=weight_decay,
                      weight_decay_mask=mask, trust_coefficient=lars_trust_coefficient,
                      eps=lars_eps, trust_ratio_mask=mask, momentum=momentum)


def _in_unit_interval(key: str) -> Callable[[Any], None]:
    def check(optim: Any) -> None:
        if not 0.0 <= optim[key] < 1.0:
            raise ValueError(f"config.optim.{key}={optim[key]!r} must be in [0, 1).")
    return check


def _positive(key: str) -> Callable[[Any], None]:
    def check(optim: Any) -> None:
        if not optim[key] > 0:
            raise ValueError(f"config.optim.{key}={optim[key]!r} must be positive.")
    return check


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An entry of ``OPTIMIZERS``: ``transform(learning_rate, lr_scale, weight_decay,
    decay_mask, **options)`` builds the transformation; ``options``: its own keys under
    ``optim`` and their defaults; ``checks``: each raises ``ValueError`` naming a bad
    value and its valid range."""

    transform: Callable[..., optax.GradientTransformation]
    options: tuple[tuple[str, Any], ...] = ()
    checks: tuple[Callable[[Any], None], ...] = ()


OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": Optimizer(paper_sgd, (("momentum", 0.9),), (_in_unit_interval("momentum"),)),
    "adamw": Optimizer(adamw, (("adam_b1", 0.9), ("adam_b2", 0.999), ("adam_eps", 1e-8)),
                       (_in_unit_interval("adam_b1"), _in_unit_interval("adam_b2"),
                        _positive("adam_eps"))),
    "lars": Optimizer(lars, (("momentum", 0.9), ("lars_trust_coefficient", 0.001),
                             ("lars_eps", 0.0)),
                      (_in_unit_interval("momentum"), _positive("lars_trust_coefficient"))),
}


def all_optimizer_options() -> dict[str, Any]:
    """Every entry's own options with their defaults (the base config's keys); an option
    two entries share (``momentum``) has one default."""
    options: dict[str, Any] = {}
    for name, entry in OPTIMIZERS.items():
        for key, default in entry.options:
            if options.setdefault(key, default) != default:
                raise ValueError(f"optimizer {name!r}: option {key!r} defaults to {default!r}, "
                                 f"another entry's to {options[key]!r}.")
    return options


def check_options(optim: Any) -> None:
    """The chosen optimiser's options, by its checks (``ValueError`` naming the first)."""
    for check in OPTIMIZERS[optim.optimizer].checks:
        check(optim)


def kernels_only_mask(params: Any) -> Any:
    """True for conv and fc kernels; False for biases and normalisation parameters."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def schedule_from_config(optim: Any, steps_per_epoch: float, num_epochs: int) -> Callable:
    """The learning rate as a function of the update (``steps_per_epoch`` of them an epoch),
    before the plateau scale."""
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
    total = max(1, int(num_epochs * steps_per_epoch))
    warmup = int(optim.warmup_epochs * steps_per_epoch)
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0 if warmup else base, base, warmup, total)
    decay = optax.linear_schedule(base, 0.0, total - warmup)
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), decay], [warmup])


def optimizer_from_config(optim: Any, params: Any, steps_per_epoch: int,
                          num_epochs: int) -> optax.GradientTransformation:
    """``optim.optimizer``'s entry with its options from ``optim``, the schedule and a
    plateau scale as injected hyperparameters; with ``optim.accumulate_steps`` k > 1, the
    gradients of k steps averaged into one update (the schedule counts updates)."""
    entry = OPTIMIZERS[optim.optimizer]
    accumulate = optim.get("accumulate_steps", 1)
    mask = None if optim.decay_biases_and_norms else kernels_only_mask(params)
    factory = optax.inject_hyperparams(entry.transform, static_args=("decay_mask",))
    tx = factory(learning_rate=schedule_from_config(optim, steps_per_epoch / accumulate,
                                                    num_epochs),
                 lr_scale=1.0, weight_decay=optim.weight_decay, decay_mask=mask,
                 **{key: optim[key] for key, _ in entry.options})
    if accumulate > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulate).gradient_transformation()
    return tx


def create_optimizer(config: Any, model_config: networks.ModelConfig, steps_per_epoch: int
                     ) -> optax.GradientTransformation:
    """``config.optim``'s optimiser for ``model_config``'s network, over ``config.num_epochs``
    epochs of ``steps_per_epoch`` steps (the parameters' shapes say which are kernels)."""
    dummy = jax.ShapeDtypeStruct((1, *model_config.input_shape), jnp.float32)
    params = jax.eval_shape(networks.AlexNet(model_config).init, jax.random.key(0), dummy)["params"]
    return optimizer_from_config(config.optim, params, steps_per_epoch, config.num_epochs)


def _injected(opt_state: Any) -> Any:
    """The ``inject_hyperparams`` state inside ``opt_state``, whatever wraps it (a
    NamedTuple state such as ``MultiSteps``'s, or a chain's tuple)."""
    if hasattr(opt_state, "hyperparams"):
        return opt_state
    if isinstance(opt_state, tuple):
        for part in opt_state:
            found = _injected(part)
            if found is not None:
                return found
    return None


def _with_injected(opt_state: Any, injected: Any) -> Any:
    """``opt_state`` with its injected state replaced by ``injected``."""
    if hasattr(opt_state, "hyperparams"):
        return injected
    if isinstance(opt_state, tuple):
        parts = [_with_injected(part, injected) if _injected(part) is not None else part
                 for part in opt_state]
        return opt_state._replace(**dict(zip(opt_state._fields, parts))) \
            if hasattr(opt_state, "_fields") else type(opt_state)(parts)
    return opt_state


def current_learning_rate(opt_state: Any) -> jax.Array:
    hyper = _injected(opt_state).hyperparams
    return hyper["learning_rate"] * hyper["lr_scale"]


def lr_scale(opt_state: Any) -> jax.Array:
    return _injected(opt_state).hyperparams["lr_scale"]


def scale_learning_rate(opt_state: Any, factor: float) -> Any:
    """The optimiser state with its learning-rate scale multiplied by ``factor``."""
    injected = _injected(opt_state)
    hyper = dict(injected.hyperparams)
    hyper["lr_scale"] = hyper["lr_scale"] * jnp.asarray(factor, hyper["lr_scale"].dtype)
    return _with_injected(opt_state, injected._replace(hyperparams=hyper))


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
