"""Classification metrics: the loss, top-k errors, the sums an evaluation adds up, a
logged window's means, and the check that training has not diverged (where they are
written: ``runtime/metric_writer.py``)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

TEN_CROP = "10crop_"  # the prefix of the metrics of the paper's 10-patch evaluation


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """1.0 where the label is among the k highest logits (ties broken towards the label)."""
    label_logit = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=1)
    rank = jnp.sum(logits > label_logit, axis=1)  # how many classes beat the label
    return (rank < k).astype(jnp.float32)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=1)[:, 0]


def error_rates(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """The batch's top-1 and top-5 error rates."""
    return {f"top{k}_error": 1.0 - topk_correct(logits, labels, k).mean() for k in (1, 5)}


def masked_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """The loss and the top-1 and top-5 hits summed over the examples whose ``mask`` is 1
    (padding is 0), and their count: what an evaluation adds up over a split."""
    return {"loss": jnp.sum(cross_entropy(logits, labels) * mask),
            "top1_correct": jnp.sum(topk_correct(logits, labels, 1) * mask),
            "top5_correct": jnp.sum(topk_correct(logits, labels, 5) * mask),
            "count": jnp.sum(mask)}


# A mean training loss this many times a uniform guess's (ln of the classes) is divergence:
# no network that is learning gets near it (the "scaled" init starts below 10x).
DIVERGED_FACTOR = 100.0


class Diverged(FloatingPointError):
    """The training loss became non-finite, or blew up, at ``step``."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def check_diverged(window: list[dict], step: int, num_classes: int, which: str = "") -> None:
    """Stops a run (``Diverged``) whose loss at a step of ``window`` (the per-step metrics
    of the steps up to ``step``) is not finite or over ``DIVERGED_FACTOR`` times a uniform
    guess's, naming that step and ``which`` run."""
    losses = np.asarray(jax.device_get([m["loss"] for m in window]), np.float64)
    limit = DIVERGED_FACTOR * math.log(max(num_classes, 2))
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~(np.abs(losses) <= limit))
    if bad.size:
        first = step - len(window) + 1 + int(bad[0])
        raise Diverged(f"Training loss{which} became {losses[bad[0]]:.4g} at step {first}; "
                       "stopping.", first)


def mean_metrics(window: list[dict]) -> dict[str, float]:
    """Each metric's mean over ``window``'s steps, fetched from the devices at once."""
    fetched = jax.device_get(window)
    return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def training_record(window: list[dict], epoch: float, batch_size: int, seconds: float
                    ) -> dict[str, float]:
    """What a run logs of its last steps: the means of ``window``'s metrics (the loss and
    errors prefixed ``train_``), the epoch, and the images per second over ``seconds``."""
    means = mean_metrics(window)
    return {"epoch": epoch,
            **{f"train_{k}": v for k, v in means.items() if k != "learning_rate"},
            "learning_rate": means["learning_rate"],
            "images_per_s": len(window) * batch_size / seconds}
