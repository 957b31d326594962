"""Evaluation: a jitted evaluation step's sums over a split, and what a run records of them.

``train.eval_step`` computes a batch's sums on the device; ``evaluate`` adds them up over
a split's batches into loss and errors, per run (one, or one per seed where several
seeds are evaluated at once: ``seeds.py``); ``record`` appends an evaluation to a run's
history and writes it (scalars and a picture of conv1's kernels); ``evaluate_only`` is
``--config.eval_only``: a checkpoint's scores in ``eval.json``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from alexnet_jax.model import layouts, visualize
from alexnet_jax.runtime import run_files
from alexnet_jax.runtime.metric_writer import MetricWriter
from alexnet_jax.training import train
from alexnet_jax.training.metrics import TEN_CROP


class EvaluationInterrupted(Exception):
    """A stop was requested during an evaluation, which was abandoned."""


def evaluate(eval_step: Callable, state: Any, batches: Iterator[dict],
             layout: layouts.Layout, stop: Callable[[], bool] = lambda: False
             ) -> list[dict[str, float]]:
    """Loss and errors over ``batches``, a record per run: one, or one per seed where
    ``eval_step`` runs several seeds' states at once (its sums then have a leading seed
    axis).  Raises ``EvaluationInterrupted`` between batches once ``stop()`` holds."""
    totals: dict[str, np.ndarray] = {}
    for batch in batches:
        if stop():
            raise EvaluationInterrupted
        sums = jax.device_get(eval_step(state, layout.shard_batch(batch)))
        for key, value in sums.items():
            totals[key] = totals.get(key, 0.0) + np.asarray(value, np.float64).reshape(-1)
    records = []
    for run in range(len(totals["count"])):
        count = totals["count"][run]
        result = {"examples": int(count)}
        for prefix in ("", TEN_CROP) if TEN_CROP + "loss" in totals else ("",):
            result.update({
                f"{prefix}loss": float(totals[f"{prefix}loss"][run] / count),
                f"{prefix}top1_error": float(1.0 - totals[f"{prefix}top1_correct"][run] / count),
                f"{prefix}top5_error": float(1.0 - totals[f"{prefix}top5_correct"][run] / count)})
        records.append(result)
    return records


def evaluate_splits(eval_step: Callable, state: Any, pipeline: Any, batch_size: int,
                    layout: layouts.Layout, stop: Callable[[], bool] = lambda: False
                    ) -> list[dict[str, dict]]:
    """Each evaluation split's scores (validation where held out, then test), a record
    per run: ``evaluate`` over every split of ``pipeline``."""
    per_split = {split: evaluate(eval_step, state, pipeline.eval_batches(batch_size, split),
                                 layout, stop)
                 for split in pipeline.evaluation_splits}
    return [{split: scores[run] for split, scores in per_split.items()}
            for run in range(len(per_split["test"]))]


def record(step: int, epoch: int, results: dict[str, dict], history: list[dict],
           writer: MetricWriter, params: Any, averaged: dict[str, dict] | None = None,
           best_by: str = "raw") -> dict[str, Any]:
    """One run's evaluation (``results``: each split's scores; ``averaged``: those of the
    weights' moving average, where there is one, as ``ema_*``) appended to its
    ``history`` and written, with a picture of conv1's kernels; returns the history's
    entry, whose ``selection_top1_error`` (validation where held out, else test; the
    average's with ``best_by="ema"``) the plateau policy and the "best" checkpoint
    read."""
    test = results["test"]
    entry = {"step": step, "epoch": epoch, **test,
             **{f"validation_{k}": v for k, v in results.get("validation", {}).items()},
             "selection_top1_error": results.get("validation", test)["top1_error"]}
    scalars = {f"{split}_{k}": v for split in results for k, v in results[split].items()}
    if averaged is not None:
        entry.update({f"ema_{k}": v for k, v in averaged["test"].items()})
        entry.update({f"ema_validation_{k}": v
                      for k, v in averaged.get("validation", {}).items()})
        entry["ema_selection_top1_error"] = averaged.get("validation",
                                                         averaged["test"])["top1_error"]
        if best_by == "ema":
            entry["selection_top1_error"] = entry["ema_selection_top1_error"]
        scalars.update({f"ema_{split}_{k}": v for split in averaged
                        for k, v in averaged[split].items()})
    history.append(entry)
    writer.write(step, {"epoch": epoch, **scalars})
    writer.image(step, "conv1_kernels", visualize.conv1_pixels(params, step))
    return entry


def evaluate_only(eval_step: Callable, state: Any, pipeline: Any, config: Any, workdir: str,
                  layout: layouts.Layout) -> dict[str, Any]:
    """Every evaluation split's scores of ``state`` (a checkpoint) in ``DIR/eval.json``, and
    its moving average's (``ema_*``) where it keeps one."""
    scores, = evaluate_splits(eval_step, state, pipeline, config.eval_batch_size, layout)
    result = {"step": int(state.step),
              **{f"{split}_{k}": v for split in scores for k, v in scores[split].items()}}
    if state.ema is not None:
        averaged, = evaluate_splits(eval_step, train.averaged(state), pipeline,
                                    config.eval_batch_size, layout)
        result.update({f"ema_{split}_{k}": v for split in averaged
                       for k, v in averaged[split].items()})
    run_files.write_json(workdir, "eval.json", result)
    print(f"Step {result['step']}: test top-1 error {result['test_top1_error']:.4f}, top-5 "
          f"{result['test_top5_error']:.4f}; {workdir}/eval.json")
    return result
