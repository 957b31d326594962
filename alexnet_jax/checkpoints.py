"""Checkpoints with orbax-checkpoint: save, keep the last K and the best, resume.

A checkpoint holds everything a run needs to continue as if it had never stopped:
the TrainState's arrays (params, batch_stats, opt_state with its learning-rate
scale, step, rng) and, as JSON, the plateau policy's counters and the evaluation
history.  The position in the data is the step itself: epoch = step // steps per
epoch, and the pipeline makes the batches of an epoch from (seed, epoch) alone.

Layout: ``DIR/checkpoints/latest/<step>/`` (the last ``keep``) and
``DIR/checkpoints/best/<step>/`` (the one with the lowest test top-1 error).
Orbax writes each step under a temporary name and renames it when complete, so a
process killed mid-save leaves no step that a restart would load.
"""
from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from alexnet_jax.optim import PlateauPolicy


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the step and the cause."""


def _arrays(state: Any) -> dict[str, Any]:
    return {"params": state.params, "batch_stats": state.batch_stats,
            "opt_state": state.opt_state, "step": state.step, "rng": state.rng}


def _own_copy(tree: Any) -> Any:
    """The train step donates the state's buffers: an asynchronous save must own its bytes.
    A host copy where this process holds the whole array, else a device copy (multi-host)."""
    def copy(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x.copy()
        return np.array(x, copy=True)
    return jax.tree.map(copy, tree)


def _shape_mismatches(saved: Any, target: Any) -> list[str]:
    saved_flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(saved)}
    problems = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(target):
        key = jax.tree_util.keystr(path)
        if key not in saved_flat:
            problems.append(f"{key} is missing from the checkpoint")
        elif tuple(saved_flat[key].shape) != tuple(leaf.shape):
            problems.append(f"{key} has shape {tuple(saved_flat[key].shape)} in the checkpoint "
                            f"but {tuple(leaf.shape)} in this config's model")
    target_keys = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(target)}
    problems += [f"{key} is in the checkpoint but not in this config's model"
                 for key in saved_flat if key not in target_keys]
    return problems


def _orbax_manager(directory: str, options: ocp.CheckpointManagerOptions | None = None
                   ) -> ocp.CheckpointManager:
    # Naming the handlers (not just the items) lets item_metadata read shapes before restoring.
    return ocp.CheckpointManager(directory, options=options, item_handlers={
        "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})


class CheckpointManager:
    def __init__(self, workdir: str, config: Any):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.every_steps = config.checkpoint.every_steps
        self.seconds_blocked = 0.0  # time the training loop spent in save()
        options = dict(enable_async_checkpointing=config.checkpoint.async_save, create=True)
        self.latest = _orbax_manager(
            os.path.join(self.directory, "latest"),
            ocp.CheckpointManagerOptions(max_to_keep=config.checkpoint.keep, **options))
        self.best = _orbax_manager(
            os.path.join(self.directory, "best"), ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m["test_top1_error"], best_mode="min",
                keep_checkpoints_without_metrics=False, **options))

    def should_save(self, step: int) -> bool:
        return bool(self.every_steps) and step % self.every_steps == 0

    def save(self, step: int, state: Any, plateau: PlateauPolicy, history: list[dict],
             wall_s: float) -> None:
        if step in self.latest.all_steps():
            return
        started = time.perf_counter()
        meta = {"plateau": plateau.state_dict(), "history": history, "wall_s": wall_s}
        args = ocp.args.Composite(state=ocp.args.StandardSave(_own_copy(_arrays(state))),
                                  meta=ocp.args.JsonSave(meta))
        try:
            self.latest.save(step, args=args)
            if history and history[-1]["step"] == step:
                self.best.save(step, args=args,
                               metrics={"test_top1_error": history[-1]["top1_error"]})
        except OSError as error:
            raise CheckpointError(
                f"Could not write the checkpoint of step {step} under {self.directory}: "
                f"{error}. Free disk space or fix permissions; the earlier checkpoints are intact "
                "(orbax renames a step into place only once it is complete).") from error
        self.seconds_blocked += time.perf_counter() - started

    def restore_or_keep(self, state: Any, plateau: PlateauPolicy
                        ) -> tuple[Any, PlateauPolicy, list[dict], float]:
        """The latest complete checkpoint (state, plateau policy, eval history, wall time so
        far), or the given fresh state if there is none."""
        step = self.latest.latest_step()
        if step is None:
            return state, plateau, [], 0.0
        arrays, meta = read_checkpoint(self.latest, step, state)
        return (state.replace(**arrays), PlateauPolicy.from_state_dict(meta["plateau"]),
                list(meta["history"]),
                float(meta.get("wall_s", 0.0)))

    def close(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        self.latest.close()
        self.best.close()


def read_checkpoint(manager: ocp.CheckpointManager, step: int, state: Any) -> tuple[dict, dict]:
    """Reads step ``step`` into the structure of ``state``, or says precisely why not."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _arrays(state))
    where = os.path.join(str(manager.directory), str(step))
    try:
        saved = manager.item_metadata(step)["state"]
    except Exception as error:
        raise CheckpointError(f"The checkpoint of step {step} at {where} is unreadable "
                              f"({type(error).__name__}: {error}). It was left in place; move "
                              "it aside to resume from the one before.") from error
    # The model-dependent parts; opt_state mirrors params.
    problems = _shape_mismatches({k: saved[k] for k in ("params", "batch_stats") if k in saved},
                                 {k: target[k] for k in ("params", "batch_stats")})
    if problems:
        raise CheckpointError(
            f"The checkpoint of step {step} at {where} does not fit this config "
            f"(another variant or widths?): " + "; ".join(problems[:5]) +
            ". Use another --workdir, or the config the checkpoint was written with "
            "(its config.json).")
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as error:
        raise CheckpointError(f"The checkpoint of step {step} at {where} is corrupt "
                              f"({type(error).__name__}: {str(error)[:300]}). It was left in "
                              "place; move it aside to resume from the one before.") from error
    return restored["state"], restored["meta"]


def load_weights(path: str, state: Any) -> dict[str, Any]:
    """Parameters and BatchNorm statistics of another run (its workdir, its checkpoints/
    folder, or one step's folder), to start a new run from (fine-tuning)."""
    path = os.path.abspath(path)
    candidates = [path, os.path.join(path, "latest"), os.path.join(path, "checkpoints", "latest")]
    for directory in candidates:
        if os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory)):
            manager = _orbax_manager(directory)
            step = manager.latest_step()
            break
    else:
        parent, name = os.path.split(path)
        if not name.isdigit() or not os.path.isdir(path):
            raise CheckpointError(f"No checkpoint found at {path} (looked for step folders in "
                                  f"{', '.join(candidates)}).")
        manager, step = _orbax_manager(parent), int(name)
    arrays, _ = read_checkpoint(manager, step, state)
    manager.close()
    return {"params": arrays["params"], "batch_stats": arrays["batch_stats"]}
