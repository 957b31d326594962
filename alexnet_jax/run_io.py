"""What a training run does around its loop: the workdir's files, the console's progress
bar, TensorBoard's hyperparameters, and stopping on a signal.

* ``check_workdir``, ``write_config``, ``write_json``, ``truncate_metrics``: the files a
  run writes besides its metrics and checkpoints (only process 0 writes shared files);
  ``open_run`` writes them as a run (re)starts and opens its metric writer;
  ``resume_changes`` and ``run_hash``: a run resumed with other settings says so and
  records them in its identity.
* ``Progress``: the console's progress bar (tqdm).
* ``HPARAMS`` and ``hyperparameters``: what TensorBoard's HParams view compares.
* ``StopSignals``: SIGTERM and SIGINT as a request to stop at a step every process agrees
  on, with a deadline for a process that cannot get there.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import tempfile
import threading
from typing import Any

import jax

from alexnet_jax import checkpoints, config_base, models, supervisor
from alexnet_jax.metrics import TEN_CROP, MetricWriter

# --- the workdir ---------------------------------------------------------------------------

def check_workdir(workdir: str) -> None:
    """That the workdir can be written (created if missing), leaving nothing behind."""
    try:
        os.makedirs(workdir, exist_ok=True)
        # A probe of its own per process: the processes of a multi-host run share the workdir.
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test."):
            pass
    except OSError as error:
        raise PermissionError(f"Cannot write to workdir {workdir!r} ({error.strerror}); choose "
                              "another --workdir or fix its permissions.") from error


# Keys a resumed run may change: how it is carried out, not what it computes (a layout
# trains the same numbers as any other, parallel.py).
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


def resume_changes(workdir: str, config: Any) -> list[dict[str, Any]]:
    """The settings a run was resumed with that differ from those its checkpoints were
    written under (keys outside ``RESUMABLE_KEYS``), each resume's as a record (the step
    and ``{key: [before, now]}``), the earlier resumes' first (``say_changes`` tells of
    this one's once it has resumed).  The run's identity then records them
    (``run_hash``), so that it is not taken for a fresh run."""
    path = os.path.join(workdir, "config.json")
    steps = checkpoints.complete_steps(os.path.join(checkpoints.directory_of(workdir), "latest"))
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


def write_json(workdir: str, name: str, record: dict[str, Any]) -> None:
    if jax.process_index() == 0:  # the primary process writes for all
        with open(os.path.join(workdir, name), "w") as f:
            json.dump(record, f, indent=1)


def write_config(workdir: str, config: Any, resumes: list[dict[str, Any]] = ()) -> None:
    """``config.json``: the resolved config, the changes it was resumed with, and its
    ``config_hash`` (the run's identity for sweeps, ``run_hash``)."""
    write_json(workdir, "config.json", {**json.loads(config.to_json_best_effort()),
                                        **({RESUMES: list(resumes)} if resumes else {}),
                                        "config_hash": run_hash(config, list(resumes))})


def truncate_metrics(workdir: str, step: int) -> None:
    """Drops records written after ``step`` by a run that died before its next checkpoint,
    so that the resumed run's records follow on without duplicates, and a line a crash cut
    short mid-write (with a warning naming it)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() != 0 or not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                print(f"warning: dropped line {number} of {path}, which a crash cut short "
                      f"mid-write: {line.strip()[:60]!r}", file=sys.stderr, flush=True)
                continue
            if record["step"] <= step:
                kept.append(line.rstrip("\n") + "\n")
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


def open_run(workdir: str, config: Any, model_config: models.ModelConfig, step: int,
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


def run_summary(history: list[dict], step: int, wall_s: float, pipeline: Any,
                config: Any, model_config: models.ModelConfig,
                resumes: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """``summary.json``'s record: the final evaluation, the best one by the selection
    error (validation where there is a validation split; test otherwise), and what the
    network's normalisation resolved (e.g. its groups), where it resolves anything."""
    final = history[-1]
    best = min(history, key=lambda h: h["selection_top1_error"])
    ten_crop = {f"test_{k}": v for k, v in final.items() if k.startswith(TEN_CROP)}
    validation = {k: v for k, v in final.items() if k.startswith("validation_")}
    return {"test_top1_error": final["top1_error"], "test_top5_error": final["top5_error"],
            **ten_crop, **validation,
            "test_loss": final["loss"], "test_examples": final["examples"],
            "best_test_top1_error": best["top1_error"], "best_test_top5_error": best["top5_error"],
            "best_epoch": best["epoch"], "best_selection_top1_error":
            best["selection_top1_error"], "steps": step, "epochs": config.num_epochs,
            "wall_s": wall_s, "train_examples": pipeline.num_train,
            "platform": jax.default_backend(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "config_hash": run_hash(config, list(resumes)),
            **({"norm_layers": facts} if (facts := models.norm_facts(model_config)) else {})}


# --- the console ---------------------------------------------------------------------------

class Progress:
    """A console progress bar with loss, error, images/s and time left (tqdm)."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, steps: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            self.bar.set_postfix(loss=f"{metrics['train_loss']:.3f}",
                                 err=f"{metrics['train_top1_error']:.3f}",
                                 img_s=f"{metrics['images_per_s']:.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- TensorBoard's HParams -----------------------------------------------------------------

# The hyperparameters every run declares, and the scalars that are its results.
HPARAMS = ("model.variant", "model.norm", "model.norm_position", "model.pool",
           "model.activation", "model.towers", "model.dropout_rate", "optim.learning_rate",
           "optim.schedule", "batch_size", "num_epochs", "seed")
HPARAM_METRICS = ("test_top1_error", "test_top5_error", "test_loss", "validation_top1_error",
                  "validation_loss", "train_loss", "train_top1_error")


def hyperparameters(config: Any, model_config: models.ModelConfig) -> dict[str, Any]:
    """``HPARAMS`` as plain values, the model's resolved where the config leaves them unset,
    and the normalisation's own settings (``components.Norm.options``)."""
    values = {}
    for key in HPARAMS:
        value = config
        for part in key.split("."):
            value = value[part]
        values[key] = getattr(model_config, key.split(".")[-1]) if value is None else value
    values.update({f"model.{key}": value for key, value in model_config.norm_options})
    return values


# --- stopping ------------------------------------------------------------------------------

class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT arrived; the latest checkpoint is complete and the run resumes."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @classmethod
    def at(cls, step: int, signum: int, checkpoints_dir: str) -> TrainingInterrupted:
        """The stop at ``step``, whose checkpoint is in ``checkpoints_dir``."""
        return cls(f"Stopped by {signal_name(signum)} at step {step}; its checkpoint is in "
                   f"{checkpoints_dir}. Run the same command again to resume.", signum)


STOP_DEADLINE_S = 60.0
_STOP_KEY = "alexnet_jax/stop"


class StopSignals:
    """SIGTERM and SIGINT as a request to stop at a safe point: after a step (with its
    checkpoint), between evaluation batches, or between the steps of start-up.

    In a multi-process run every process must stop after the same step, or the one that
    stops first leaves the others waiting in a collective.  The first process to get a
    signal publishes it in ``jax.distributed``'s key-value store, where a thread of every
    process waits for it; the thread that learns of the stop publishes the steps its
    process has committed to (``claimed``), and every process trains on to the largest
    (``stop_step``) before saving it and stopping.  These threads answer while the main
    thread is busy, so a process blocked on a peer still publishes its step.  Evaluations
    run to their end there (their batches are collectives too).

    A process that cannot reach that step (a peer stopped or lost mid-collective, or stuck
    at a checkpoint's barrier) still ends: ``deadline_s`` after the request a watchdog
    thread prints one line naming the last complete checkpoint and exits with 128 + the
    signal.  The signal itself reaches that thread through ``signal.set_wakeup_fd``, which
    works while the main thread is blocked in XLA or orbax.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, deadline_s: float = STOP_DEADLINE_S, checkpoints_dir: str = ""):
        self.deadline_s, self.checkpoints_dir = deadline_s, checkpoints_dir
        self.received: int | None = None
        self.claimed = 0  # steps this process has dispatched or is about to
        self.stop_step: int | None = None
        self._lock = threading.Lock()
        self._previous: dict[int, Any] = {}
        self._watchdog: threading.Timer | None = None
        self._wakeup: tuple[int, int] | None = None
        self._previous_fd = -1
        self._client = _distributed_client()
        self._closed = threading.Event()
        self._listener: threading.Thread | None = None

    @property
    def multi_process(self) -> bool:
        return self._client is not None and jax.process_count() > 1

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:  # noted at once where the main thread is free ...
                self._previous[sig] = signal.signal(
                    sig, lambda signum, frame: self.request(signum, local=True))
            read, write = os.pipe()
            os.set_blocking(write, False)
            self._wakeup = (read, write)
            # ... and by a thread where it is blocked (in XLA, in orbax, at a barrier).
            self._previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
            threading.Thread(target=self._watch, daemon=True, name="stop-signals").start()
        if self.multi_process:
            self._listener = threading.Thread(target=self._listen, daemon=True,
                                              name="stop-listener")
            self._listener.start()
        return self

    def __exit__(self, *exc):
        self._closed.set()
        if self._listener is not None:
            self._listener.join()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_fd)
            os.close(self._wakeup[1])  # ends the watching thread
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _watch(self) -> None:
        read = self._wakeup[0]
        while chunk := os.read(read, 64):
            for signum in chunk:
                if signum in self.SIGNALS:
                    self.request(signum, local=True)
        os.close(read)

    def _listen(self) -> None:
        """Waits for another process's stop, a second at a time until this run ends (a
        thread still blocked in the client when Python exits would abort the process)."""
        while self.received is None and not self._closed.is_set():
            try:
                value = self._client.blocking_key_value_get(_STOP_KEY, 1000)
            except Exception:  # not yet (a timeout), or the service is gone
                continue
            self.request(int(value), local=False)

    def request(self, signum: int, local: bool) -> None:
        """Notes a stop (idempotent), tells the other processes, arms the deadline."""
        with self._lock:
            if self.received is not None:
                return
            self.received = signum
            claimed = self.claimed
        if self.multi_process:
            if local:
                try:
                    self._client.key_value_set(_STOP_KEY, str(signum))
                except Exception:  # another process published first
                    pass
            self._client.key_value_set(f"{_STOP_KEY}/claim/{jax.process_index()}", str(claimed))
        with self._lock:
            if self._watchdog is None:
                self._watchdog = threading.Timer(self.deadline_s, self._expire)
                self._watchdog.daemon = True
                self._watchdog.start()

    def _expire(self) -> None:
        name = signal_name(self.received)
        where = supervisor.resume_point(self.checkpoints_dir)
        print(f"error: Stopped by {name}, but this process could not reach a step where every "
              f"process saves within {self.deadline_s:.0f} s (waiting on another process, in "
              f"a collective or a checkpoint's barrier); exiting without a new checkpoint. "
              f"Restart every process with the same command to resume from {where}.",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(128 + self.received)

    def stop_here(self, step: int) -> bool:
        """Called after ``step`` steps, before the next: True where the run must stop now
        (with a checkpoint of ``step``); else the next step is claimed."""
        with self._lock:
            if self.received is None:
                self.claimed = step + 1
                return False
        if not self.multi_process:
            return True
        if self.stop_step is None:
            self.stop_step = max(
                int(self._client.blocking_key_value_get(f"{_STOP_KEY}/claim/{p}", 3_600_000))
                for p in range(jax.process_count()))
        if step >= self.stop_step:
            return True
        self.claimed = step + 1
        return False

    def interrupts_evaluation(self) -> bool:
        """Whether an evaluation should be abandoned now (one process alone may)."""
        return self.received is not None and not self.multi_process

    def check(self, where: str) -> None:
        """Raises ``TrainingInterrupted`` if a signal arrived (before any checkpoint)."""
        if self.received is not None:
            raise TrainingInterrupted(f"Stopped by {signal_name(self.received)} "
                                      f"{where}.", self.received)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _distributed_client() -> Any:
    from jax._src import distributed
    return distributed.global_state.client

