"""Checkpoints with orbax-checkpoint: save, keep the last K and the best, resume, verify.

A checkpoint holds everything a run needs to continue as if it had never stopped:
the TrainState's arrays (params, batch_stats, opt_state with its learning-rate
scale, step, rng) and, as JSON, the plateau policy's counters, the evaluation
history, and a checksum of every array.  The position in the data is the step
itself: epoch = step // steps per epoch, and the pipeline makes the batches of an
epoch from (seed, epoch) alone.

Layout: ``DIR/checkpoints/latest/<step>/`` (the last ``keep``) and
``DIR/checkpoints/best/<step>/`` (the one with the lowest evaluation error).
Orbax writes each step under a temporary name and renames it when complete, so a
process killed mid-save leaves no step that a restart would load; the next start
removes such leftovers.

Checksums: two wrap-around uint32 sums over each array's bits, the plain sum and one
weighted by position, computed by XLA where the arrays live (integer sums do not
depend on the order of summation, so every layout gets the same numbers).  A restore
recomputes them; a checkpoint whose bytes changed on disk is moved aside to
``DIR/checkpoints/damaged/`` and the run resumes from the newest intact one.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
import traceback
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from alexnet_jax.runtime.errors import CheckpointError, DamagedError, MismatchError


class Resumed(NamedTuple):
    """Where a run starts: its state, plateau policy and evaluation history, and the wall
    time of the sessions before this one (the fresh state, with none, for a new run)."""

    state: Any
    plateau: Any
    history: list
    wall_s: float


def _arrays(state: Any) -> dict[str, Any]:
    """What a checkpoint holds of a state: its arrays (the weights' moving average only
    where the run keeps one, so that checkpoints without it still read)."""
    arrays = {"params": state.params, "batch_stats": state.batch_stats,
              "opt_state": state.opt_state, "step": state.step, "rng": state.rng}
    if getattr(state, "ema", None) is not None:
        arrays["ema"] = state.ema
    return arrays


def _own_copy(tree: Any) -> Any:
    """The train step donates the state's buffers: an asynchronous save must own its bytes.
    A host copy where this process holds the whole array, else a device copy (multi-host)."""
    def copy(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x.copy()
        return np.array(x, copy=True)
    return jax.tree.map(copy, tree)


def _bits(x: jax.Array) -> jax.Array:
    """The array's bytes as a flat uint32 vector (smaller items widened, larger ones split)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    itemsize = jnp.dtype(x.dtype).itemsize
    if itemsize >= 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    unsigned = {1: jnp.uint8, 2: jnp.uint16}[itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).reshape(-1).astype(jnp.uint32)


@jax.jit
def _checksums(tree: Any) -> Any:
    def one(x):
        bits = _bits(jnp.asarray(x))
        weights = 2 * jnp.arange(bits.size, dtype=jnp.uint32) + 1
        return jnp.stack([jnp.sum(bits, dtype=jnp.uint32),
                          jnp.sum(bits * weights, dtype=jnp.uint32)])
    return jax.tree.map(one, tree)


def checksums(tree: Any) -> dict[str, list[int]]:
    """Per array of ``tree`` (by its path): [sum of its bits, position-weighted sum], mod 2^32."""
    sums = jax.device_get(_checksums(tree))
    return {jax.tree_util.keystr(path): [int(v) for v in value]
            for path, value in jax.tree_util.tree_leaves_with_path(sums)}


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


def remove_unfinished(directory: str) -> list[str]:
    """Removes the steps a killed save left under their temporary names; returns them."""
    removed = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if ".orbax-checkpoint-tmp" in name:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            removed.append(name)
    return removed


def _selection_error(metrics: dict[str, float]) -> float:
    """What "best" means: the error hyperparameters are chosen on (validation where there
    is a validation split, else test; checkpoints of earlier versions named it so)."""
    return metrics.get("selection_top1_error", metrics.get("test_top1_error"))


def directory_of(workdir: str) -> str:
    """Where a run's checkpoints live."""
    return os.path.abspath(os.path.join(workdir, "checkpoints"))


def has_checkpoint(workdir: str) -> bool:
    """Whether ``workdir`` holds a complete checkpoint to resume from."""
    return bool(complete_steps(os.path.join(directory_of(workdir), "latest")))


def check_latest_beside_best(workdir: str) -> None:
    """Refuses (``MismatchError``) a start from step 0 beside an earlier run's "best": with
    ``latest`` gone the run would silently train again from scratch next to it."""
    directory = directory_of(workdir)
    best = complete_steps(os.path.join(directory, "best"))
    if best and not has_checkpoint(workdir):
        raise MismatchError(
            f"{directory}/latest holds no checkpoint, but {directory}/best holds step "
            f"{best[-1]}: this command would train from step 0 beside it. To continue from "
            f"it: --workdir NEW_DIR --config.restore_from={directory}/best/{best[-1]}; to start "
            f"over here: remove {directory}.")


def complete_steps(directory: str) -> list[int]:
    """The steps of ``directory`` (a manager's: ``latest`` or ``best``) that are complete,
    in order, from the folder names alone (orbax renames a step into place once it is
    complete)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _size_on_disk(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def _megabytes(count: float) -> str:
    return f"{count / 2**20:,.1f} MB"


def _out_of_space(error: BaseException) -> bool:
    """Whether a failed write ran out of space (errno 28, or tensorstore's words for it)."""
    return (isinstance(error, OSError) and error.errno == 28) or any(
        words in str(error) for words in ("No space left on device", "RESOURCE_EXHAUSTED"))


class CheckpointManager:
    def __init__(self, workdir: str, config: Any):
        self.directory = directory_of(workdir)
        self.every_steps = config.checkpoint.every_steps
        self.seconds_blocked = 0.0  # time the training loop spent in save()
        def options(name: str, **settings: Any) -> ocp.CheckpointManagerOptions:
            # Both managers save the same step at an epoch's end; in a multi-host run each
            # save synchronises the processes at barriers named after the step, so each
            # manager's barriers carry its own name or the two saves collide.
            return ocp.CheckpointManagerOptions(
                enable_async_checkpointing=config.checkpoint.async_save, create=True,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix=name), **settings)

        self.latest = _orbax_manager(os.path.join(self.directory, "latest"),
                                     options("latest", max_to_keep=config.checkpoint.keep))
        self.best = _orbax_manager(os.path.join(self.directory, "best"), options(
            "best", max_to_keep=1, best_fn=_selection_error, best_mode="min",
            keep_checkpoints_without_metrics=False))
        self.warned_of_space = False
        quiet_orbax_failures()  # a failed asynchronous write would print tracebacks
        self.needed = 0  # bytes a checkpoint takes, once one was saved

    def should_save(self, step: int) -> bool:
        return bool(self.every_steps) and step % self.every_steps == 0

    def save(self, step: int, state: Any, plateau: Any, history: list, wall_s: float,
             selection_error: float | None = None) -> None:
        """Saves ``state`` and, as JSON, the plateau policy (anything with ``state_dict``),
        the evaluation history and the wall time; ``selection_error``: the error "best" is
        chosen on, where this step was evaluated (a candidate for "best")."""
        if step in self.latest.all_steps():
            return
        started = time.perf_counter()
        arrays = _arrays(state)
        meta = {"plateau": plateau.state_dict(), "history": history, "wall_s": wall_s,
                "checksums": checksums(arrays)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(_own_copy(arrays)),
                                  meta=ocp.args.JsonSave(meta))
        self.needed = self.checkpoint_bytes(arrays)
        self.warn_of_space(self.needed)
        with self.writing():
            self.latest.save(step, args=args)
            if selection_error is not None:
                self.best.save(step, args=args, metrics={"selection_top1_error": selection_error})
        self.seconds_blocked += time.perf_counter() - started

    def checkpoint_bytes(self, arrays: Any) -> int:
        """What a checkpoint takes on disk: the newest complete one's size, else its
        arrays' bytes."""
        steps = complete_steps(str(self.latest.directory))
        if steps:
            return _size_on_disk(os.path.join(str(self.latest.directory), str(steps[-1])))
        return sum(np.dtype(x.dtype).itemsize * x.size for x in jax.tree.leaves(arrays))

    def warn_of_space(self, needed: int) -> None:
        """Once per run, where the workdir's file system has room for fewer than two
        more checkpoints."""
        free = shutil.disk_usage(self.directory).free
        if free < 2 * needed and not self.warned_of_space and jax.process_index() == 0:
            self.warned_of_space = True
            print(f"warning: {self.directory} has {_megabytes(free)} free, less than two "
                  f"checkpoints ({_megabytes(needed)} each): a save may fail for lack of space.",
                  file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def writing(self):
        """Turns a failed write, this one's or an earlier asynchronous one's that orbax
        reports now, into one ``CheckpointError`` saying what to do, after removing what
        the failed save left unfinished."""
        try:
            yield
        except Exception as error:  # orbax raises OSError, or ValueError from tensorstore
            if not (_out_of_space(error) or isinstance(error, OSError)):
                raise
            removed = self.remove_unfinished()
            steps = complete_steps(str(self.latest.directory))
            intact = (f"the last intact checkpoint is step {steps[-1]}, from which the same "
                      "command resumes" if steps else "no checkpoint was complete yet")
            cleaned = " (the unfinished one was removed)" if removed else ""
            if _out_of_space(error):
                usage = shutil.disk_usage(self.directory)
                size = f" a checkpoint needs about {_megabytes(self.needed)};" \
                    if self.needed else ""
                raise CheckpointError(
                    f"The file system of {self.directory} is full ({_megabytes(usage.free)} "
                    f"free of {_megabytes(usage.total)}):{size} {intact}{cleaned}. Free space "
                    "there, or move the run to a larger disk, then run the same command "
                    "again.") from None
            raise CheckpointError(
                f"Could not write a checkpoint under {self.directory}: {error}. Fix its "
                f"permissions; {intact}{cleaned}.") from None

    def resume(self, state: Any, plateau: Any, restore_from: str = "") -> Resumed:
        """Where a run starts: its newest intact checkpoint (removing what killed saves left
        unfinished), else ``restore_from``'s weights, else the given fresh state; says
        which."""
        try:
            state, plateau, history, wall_s = self.restore_or_keep(state, plateau)
        except CheckpointError:
            self.close()
            raise
        for name in self.remove_unfinished():
            print(f"Removed {name}, a checkpoint a killed save left unfinished.")
        step = int(np.ravel(jax.device_get(state.step))[0])  # the first seed's, where stacked
        if step:
            print(f"Resuming from the checkpoint of step {step} in {self.directory}.")
        elif restore_from:
            state = state.replace(**load_weights(restore_from, state))
            if getattr(state, "ema", None) is not None:  # the trainer starts it at these weights
                state = state.replace(ema=None)
            print(f"Starting from the weights in {restore_from}.")
        return Resumed(state, plateau, history, wall_s)

    def restore_or_keep(self, state: Any, plateau: Any) -> Resumed:
        """The newest intact checkpoint, or the given fresh state if there is none.  A
        damaged one (its checksums do not match its arrays) is moved aside, saying so, and
        the one before it is tried."""
        damaged = []
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                arrays, meta = read_checkpoint(self.latest, step, state)
            except DamagedError as damage:
                damaged.append(step)
                print(f"warning: {damage} It was moved to {self.move_aside(step)}; trying the "
                      "checkpoint before it.")
                continue
            if damaged:
                print(f"Resuming from step {step}, the newest intact checkpoint.")
            return Resumed(state.replace(**arrays),
                           type(plateau).from_state_dict(meta["plateau"]),
                           list(meta["history"]), float(meta.get("wall_s", 0.0)))
        if damaged:
            raise CheckpointError(
                f"No intact checkpoint is left in {self.latest.directory}: step(s) "
                f"{', '.join(map(str, damaged))} were damaged and moved to "
                f"{os.path.join(self.directory, 'damaged')}. Run the same command again to "
                "start from scratch, or restore a copy of the checkpoints.")
        return Resumed(state, plateau, [], 0.0)

    def set_aside_diverged(self, bad_step: int) -> str:
        """After the loss diverged at ``bad_step``: the checkpoints of that step's
        parameters (step ``bad_step - 1``, whose loss it was) and later are moved to
        ``checkpoints/diverged/``; returns what to do next, naming the newest kept."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        moved = []
        for manager in (self.latest, self.best):
            for step in manager.all_steps():
                if step >= bad_step - 1:
                    moved.append(step)
                    aside = os.path.join(self.directory, "diverged",
                                         f"{os.path.basename(str(manager.directory))}-{step}")
                    if jax.process_index() == 0:
                        os.makedirs(os.path.dirname(aside), exist_ok=True)
                        shutil.rmtree(aside, ignore_errors=True)
                        os.replace(os.path.join(str(manager.directory), str(step)), aside)
            manager.reload()
        workdir = os.path.dirname(self.directory)
        kept = complete_steps(str(self.latest.directory))
        aside = (f"The checkpoint(s) of step(s) {', '.join(map(str, sorted(set(moved))))}, "
                 f"whose parameters gave that loss, were moved to "
                 f"{os.path.join(self.directory, 'diverged')}. " if moved else "")
        start = (f"from step {kept[-1]}'s weights: --workdir NEW_DIR --config.restore_from="
                 f"{workdir} and a lower --config.optim.learning_rate" if kept else
                 f"with a lower --config.optim.learning_rate in a new --workdir (or remove "
                 f"{workdir})")
        return (f"{aside}Lower the learning rate (or check the data) and start a new run "
                f"{start}.")

    def move_aside(self, step: int) -> str:
        """Moves a damaged step out of orbax's sight (process 0; every process decides alike)."""
        aside = os.path.join(self.directory, "damaged", f"{step}-{int(time.time())}")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(aside), exist_ok=True)
            os.replace(os.path.join(self.latest.directory, str(step)), aside)
        self.latest.reload()
        return aside

    def remove_unfinished(self) -> list[str]:
        """The temporary steps of killed saves, removed (process 0); their names."""
        if jax.process_index() != 0:
            return []
        return [name for manager in (self.latest, self.best)
                for name in remove_unfinished(str(manager.directory))]

    def close(self) -> None:
        with self.writing():
            self.latest.wait_until_finished()
            self.best.wait_until_finished()
        self.latest.close()
        self.best.close()


def read_checkpoint(manager: ocp.CheckpointManager, step: int, state: Any) -> tuple[dict, dict]:
    """Reads step ``step`` into the structure of ``state`` and verifies its checksums, or
    says precisely why not."""
    where = os.path.join(str(manager.directory), str(step))
    try:
        saved = manager.item_metadata(step)["state"]
    except Exception as error:
        quiet_orbax_failures()
        raise DamagedError(f"The checkpoint of step {step} at {where} is unreadable "
                           f"({type(error).__name__}: {str(error)[:300]}).") from error
    # A moving average is read as the checkpoint has it: where the run no longer keeps one
    # it is read (its checksum too) and dropped; where the checkpoint has none, the state's
    # comes back as None, for the trainer to start at the restored weights.
    arrays = _arrays(state)
    arrays.pop("ema", None)
    if "ema" in saved:
        arrays["ema"] = {"params": state.params, "batch_stats": state.batch_stats}
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, arrays)
    # The model-dependent parts; opt_state mirrors params.
    problems = _shape_mismatches({k: saved[k] for k in ("params", "batch_stats") if k in saved},
                                 {k: target[k] for k in ("params", "batch_stats")})
    if problems:
        raise MismatchError(
            f"The checkpoint of step {step} at {where} does not fit this config "
            f"(another variant or widths?): " + "; ".join(problems[:3]) +
            ". Use another --workdir, or the config the checkpoint was written with "
            "(its config.json).")
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as error:
        quiet_orbax_failures()
        raise DamagedError(f"The checkpoint of step {step} at {where} is corrupt "
                           f"({type(error).__name__}: {str(error)[:300]}).") from error
    expected = restored["meta"].get("checksums")
    if expected is not None:  # checkpoints of earlier versions have none
        found = checksums(restored["state"])
        wrong = [key for key in expected if found.get(key) != expected[key]]
        if wrong:
            raise DamagedError(f"The checkpoint of step {step} at {where} is damaged: "
                               f"{', '.join(wrong[:3])} do(es) not match the checksum written "
                               "with it.")
    if getattr(state, "ema", None) is None:
        restored["state"].pop("ema", None)
    elif "ema" not in saved:
        restored["state"]["ema"] = None
    return restored["state"], restored["meta"]


def quiet_orbax_failures() -> None:
    """Silences what orbax leaves behind when a read of a damaged checkpoint or a write to
    a full disk fails, both of which this module reports as one error already.

    Orbax runs its reads and writes on event loops that it closes as soon as one of them
    fails; tensorstore then completes the operations still in flight and hands each
    result to that closed loop (``call_soon_threadsafe``), which raises "Event loop is
    closed" in a background thread, and Python prints it as an ignored exception.  This
    ``sys.unraisablehook`` drops exactly those and passes every other one on.  A failed
    read's sibling tasks and futures log their DATA_LOSS as "Task (or Future) exception
    was never retrieved" through the ``asyncio`` logger, and a failed asynchronous write
    logs its thread's RESOURCE_EXHAUSTED (no space left) through absl's: filters there drop
    those records and keep every other.  Installed once."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_callbacks", False):
        return

    def unretrieved_damaged_read(record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        return not (message.startswith(("Task exception was never retrieved",
                                        "Future exception was never retrieved"))
                    and "DATA_LOSS" in f"{error} {message}")

    def reported_out_of_space(record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else Exception(record.getMessage())
        return not (record.levelno >= logging.ERROR and _out_of_space(error))

    logging.getLogger("asyncio").addFilter(unretrieved_damaged_read)
    logging.getLogger("absl").addFilter(reported_out_of_space)

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        functions = [frame.name for frame in traceback.extract_tb(unraisable.exc_traceback)]
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
                and "call_soon_threadsafe" in functions):
            previous(unraisable)

    hook.drops_closed_loop_callbacks = True
    sys.unraisablehook = hook


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
    if getattr(state, "ema", None) is not None:
        state = state.replace(ema=None)  # the weights are what is taken, not their average
    arrays, _ = read_checkpoint(manager, step, state)
    manager.close()
    return {"params": arrays["params"], "batch_stats": arrays["batch_stats"]}

