"""The training objective: cross-entropy plus the terms the config turns on.

``LOSS_TERMS`` maps a key under ``loss`` to a term: its default (off), a check of its
value, and its per-example contribution ``value(weight, logits, labels)`` added to the
cross-entropy.  ``Objective.from_config`` builds the objective once; ``train.make_steps``
closes the training step over it, so a loss-side setting lives in one place.  A new
term is one entry and its tests.  Evaluations score the plain cross-entropy, so that
test losses stay comparable across objectives.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from alexnet_jax.training import metrics


def _label_smoothing(weight: float, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy against (1 - w) one-hot + w uniform, less the cross-entropy: the mean
    over the classes of -log p, minus -log p of the label, times w (Szegedy et al. 2016)."""
    uniform = -jnp.mean(jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)
    return weight * (uniform - metrics.cross_entropy(logits, labels))


def _in_unit_interval(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"config.loss.{key}={value!r} must be in [0, 1).")


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """An entry of ``LOSS_TERMS``: ``value(weight, logits, labels)``, per example;
    ``default``: its weight when unset (off); ``check(key, weight)`` raises ``ValueError``
    naming a bad weight."""

    value: Callable[[float, jax.Array, jax.Array], jax.Array]
    default: float = 0.0
    check: Callable[[str, float], None] = _in_unit_interval


LOSS_TERMS: dict[str, LossTerm] = {
    "label_smoothing": LossTerm(_label_smoothing),
}


def all_term_options() -> dict[str, float]:
    """The base config's ``loss`` keys: every term's weight, off."""
    return {key: term.default for key, term in LOSS_TERMS.items()}


def check_terms(loss: Any) -> None:
    for key, term in LOSS_TERMS.items():
        term.check(key, loss[key])


@dataclasses.dataclass(frozen=True)
class Objective:
    """Per-example cross-entropy plus the terms whose weight is not 0 (``weights``:
    (key, weight) pairs); with none, exactly ``metrics.cross_entropy``."""

    weights: tuple[tuple[str, float], ...] = ()

    @classmethod
    def from_config(cls, config: Any) -> Objective:
        return cls(tuple((key, float(config.loss[key])) for key in LOSS_TERMS
                         if config.loss[key]))

    def __call__(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        loss = metrics.cross_entropy(logits, labels)
        for key, weight in self.weights:
            loss = loss + LOSS_TERMS[key].value(weight, logits, labels)
        return loss
