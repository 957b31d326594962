"""Where a run's metrics are written: ``metrics.jsonl`` (one JSON object per logged step)
and TensorBoard events; ``read_metrics`` reads the first back."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any


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
