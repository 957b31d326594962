"""A run's record of itself: its identity and what TensorBoard compares.

* ``open_run`` writes what a run writes as it (re)starts: ``config.json`` (``write_config``),
  its metrics cut back to the step it starts at, TensorBoard's config text and HParams,
  and opens its metric writer;
* ``resume_changes``, ``say_changes`` and ``run_hash``: a run resumed with other settings
  says so and records them in its identity, so that it is not taken for a fresh run;
* ``run_summary``: ``summary.json``'s record;
* ``hparams_keys`` and ``hyperparameters``: what TensorBoard's HParams view compares,
  derived from the base config.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

import jax

from alexnet_jax.model import components, networks
from alexnet_jax.runtime import checkpoints
from alexnet_jax.runtime.metric_writer import MetricWriter
from alexnet_jax.runtime.run_files import truncate_metrics, write_json
from alexnet_jax.training import config_base
from alexnet_jax.training.metrics import TEN_CROP

# Keys a resumed run may change: how it is carried out, not what it computes (a layout
# trains the same numbers as any other, layouts.py).
RESUMES = "resumed_with_changes"  # config.json's record of them (``resume_changes``)
RESUMABLE_KEYS = (*config_base.UNHASHED_KEYS, "parallelism", "num_devices",
                  "log_every_steps", "eval_batch_size", "eval_only", "restore_from")


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def resume_changes(workdir: str, config: Any, checkpoints_workdir: str = ""
                   ) -> list[dict[str, Any]]:
    """The settings a run was resumed with that differ from those its checkpoints were
    written under (keys outside ``RESUMABLE_KEYS``), each resume's as a record (the step
    and ``{key: [before, now]}``), the earlier resumes' first (``say_changes`` tells of
    this one's once it has resumed).  The run's identity then records them
    (``run_hash``), so that it is not taken for a fresh run.  Its checkpoints are in
    ``checkpoints_workdir`` (default: ``workdir``; seeds trained together share one)."""
    path = os.path.join(workdir, "config.json")
    steps = checkpoints.complete_steps(os.path.join(
        checkpoints.directory_of(checkpoints_workdir or workdir), "latest"))
    if not steps or not os.path.exists(path):
        return []
    with open(path) as f:
        recorded = json.load(f)
    defaults = json.loads(config_base.base_config().to_json_best_effort())
    before = _flat(config_base.with_defaults(defaults, {k: v for k, v in recorded.items()
                                                         if k != RESUMES}))
    now = _flat(json.loads(config.to_json_best_effort()))
    changed = {key: [before.get(key), now.get(key)] for key in sorted(set(before) | set(now))
               if key not in RESUMABLE_KEYS and before.get(key) != now.get(key)}
    earlier = list(recorded.get(RESUMES, []))
    if not changed:
        return earlier
    return [*earlier, {"step": steps[-1], "changed": changed, "new": True}]


def say_changes(workdir: str, resumes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Warns of the changes this session resumed with (``resume_changes``), once the
    checkpoint was found to fit; returns the records as ``config.json`` keeps them."""
    kept = [{k: v for k, v in record.items() if k != "new"} for record in resumes]
    if resumes and resumes[-1].get("new") and jax.process_index() == 0:
        changed = resumes[-1]["changed"]
        print(f"warning: resumed {workdir} at step {resumes[-1]['step']} with settings other "
              "than those it was trained with: " + "; ".join(
                  f"{key} {a!r} -> {b!r}" for key, (a, b) in changed.items())
              + ". Its config_hash records them: it is no longer the run a fresh start of "
              "this config gives.", file=sys.stderr, flush=True)
    return kept


def run_hash(config: Any, resumes: list[dict[str, Any]]) -> str:
    """A run's identity: its config's hash, and the changes it was resumed with, if any."""
    if not resumes:
        return config_base.config_hash(config)
    text = config_base.config_hash(config) + json.dumps(resumes, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]



def write_config(workdir: str, config: Any, resumes: list[dict[str, Any]] = ()) -> None:
    """``config.json``: the resolved config, the changes it was resumed with, and its
    ``config_hash`` (the run's identity for sweeps, ``run_hash``)."""
    write_json(workdir, "config.json", {**json.loads(config.to_json_best_effort()),
                                        **({RESUMES: list(resumes)} if resumes else {}),
                                        "config_hash": run_hash(config, list(resumes))})



def open_run(workdir: str, config: Any, model_config: networks.ModelConfig, step: int,
             resumes: list[dict[str, Any]] = ()) -> MetricWriter:
    """What a run writes as it starts or resumes at ``step``: its ``config.json``, its
    metrics cut back to ``step`` (also after a run killed before its first checkpoint), and
    its TensorBoard config text and hyperparameters; returns its metric writer (process
    0's writes, the others' are dropped)."""
    write_config(workdir, config, resumes)
    truncate_metrics(workdir, step)
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    writer.text("config", "```\n" + config.to_json_best_effort(indent=2) + "\n```")
    writer.hyperparameters(hyperparameters(config, model_config), HPARAM_METRICS)
    return writer


def effective_batch_size(config: Any) -> int:
    """The examples one update averages over: the batch times the steps accumulated."""
    return config.batch_size * config.optim.accumulate_steps


def run_summary(history: list[dict], step: int, wall_s: float, pipeline: Any,
                config: Any, model_config: networks.ModelConfig,
                resumes: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """``summary.json``'s record: the final evaluation, the best one by the selection
    error (validation where there is a validation split; test otherwise), and what the
    network's normalisation resolved (e.g. its groups), where it resolves anything."""
    final = history[-1]
    best = min(history, key=lambda h: h["selection_top1_error"])
    ten_crop = {f"test_{k}": v for k, v in final.items() if k.startswith(TEN_CROP)}
    validation = {k: v for k, v in final.items() if k.startswith("validation_")}
    averaged = {f"ema_test_{k[4:]}" if not k.startswith("ema_validation_") else k: v
                for k, v in final.items()
                if k.startswith("ema_") and k != "ema_selection_top1_error"}
    return {"test_top1_error": final["top1_error"], "test_top5_error": final["top5_error"],
            **ten_crop, **validation, **averaged,
            "test_loss": final["loss"], "test_examples": final["examples"],
            "best_test_top1_error": best["top1_error"], "best_test_top5_error": best["top5_error"],
            "best_epoch": best["epoch"], "best_selection_top1_error":
            best["selection_top1_error"], "steps": step, "epochs": config.num_epochs,
            "wall_s": wall_s, "train_examples": pipeline.num_train,
            "effective_batch_size": effective_batch_size(config),
            "platform": jax.default_backend(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "config_hash": run_hash(config, list(resumes)),
            **({"norm_layers": facts} if (facts := networks.norm_facts(model_config)) else {})}


# The hyperparameters every run declares, and the scalars that are its results.
HPARAM_METRICS = ("test_top1_error", "test_top5_error", "test_loss", "validation_top1_error",
                  "validation_loss", "train_loss", "train_top1_error")


def hparams_keys() -> tuple[str, ...]:
    """What TensorBoard's HParams view compares: every key of the base config's ``model``
    and ``optim`` sections, ``batch_size``, ``num_epochs`` and ``seed`` (the normalisations'
    own settings are added by ``hyperparameters``, for the run's normalisation only)."""
    base, norm_options = config_base.base_config(), set(components.all_norm_options())
    sections = [f"{section}.{key}" for section in ("model", "optim") for key in base[section]
                if not (section == "model" and key in norm_options)]
    return (*sections, "batch_size", "num_epochs", "seed")


def hyperparameters(config: Any, model_config: networks.ModelConfig) -> dict[str, Any]:
    """``hparams_keys`` as plain values (a sequence as its text), the model's resolved
    where the config leaves them unset, and the normalisation's own settings
    (``components.Norm.options``)."""
    values = {}
    for key in hparams_keys():
        value = config
        for part in key.split("."):
            value = value[part]
        if value is None and key.startswith("model."):
            value = getattr(model_config, key.split(".")[-1], None)
        if value is not None:
            values[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    values.update({f"model.{key}": value for key, value in model_config.norm_options})
    return values
