"""Classification metrics and where they are written: JSON lines and TensorBoard (the
console's progress bar is ``run_io.Progress``)."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

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


class MetricWriter:
    """Writes ``metrics.jsonl`` (one JSON object per logged step) and TensorBoard events
    (``DIR/tensorboard/``): the same scalars, pictures, the config as text, and the run's
    hyperparameters for TensorBoard's HParams view.

    tensorboardX writes the events: it needs no TensorFlow (which only the input pipeline
    imports), and writes images, text and HParams summaries that TensorBoard reads.  Only
    the primary process writes; the others get a writer that drops everything.
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if enabled:
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in record.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def image(self, step: int, tag: str, pixels: Any) -> None:
        """An (height, width, 3) uint8 picture, TensorBoard only."""
        if self.enabled:
            self._tb.add_image(tag, pixels, step, dataformats="HWC")
            self._tb.flush()

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.enabled:
            self._tb.add_text(tag, text, step)

    def hyperparameters(self, hparams: dict[str, Any], metrics: Sequence[str]) -> None:
        """Declares the run's hyperparameters, and the scalar tags that are its results, for
        the HParams view (a session per run directory)."""
        if not self.enabled:
            return
        from tensorboardX.summary import hparams as hparams_summaries
        experiment, session_start, self._session_end = hparams_summaries(
            hparams, {tag: 0.0 for tag in metrics})
        self._tb.file_writer.add_summary(experiment)
        self._tb.file_writer.add_summary(session_start)
        self._tb.flush()

    def finished(self) -> None:
        """Marks the run's HParams session as ended (the results are its scalars)."""
        if self.enabled and getattr(self, "_session_end", None) is not None:
            self._tb.file_writer.add_summary(self._session_end)
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
