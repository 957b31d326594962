"""Trains an experiment config.

    python -m alexnet_jax.main --config experiments/fashion_mnist.py --workdir runs/fm \\
        [--config.model.norm=batchnorm ...]

Running it again on the same workdir resumes from the latest checkpoint.  ``--seeds
0,1,2,3`` with ``{seed}`` in ``--workdir`` trains those seeds as one vmapped program, each
writing its own run (``training/seeds.py``).  Multi-host:
start one process per host with ``--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`` (or ``--distributed`` where JAX detects the cluster: Cloud TPU,
SLURM, Open MPI); see README "Layouts, devices and hosts".  Each such process trains in
a child that ``runtime/supervisor.py`` watches, so that a lost process ends the others with one
line.

A bad command ends as one line on stderr, without a traceback (``--verbose`` or
``ALEXNET_JAX_VERBOSE=1`` shows it), and its exit status says what happened:

* 2: the command was rejected (a bad flag or config value, a checkpoint that does not
  fit the config); nothing of the workdir was changed;
* 1: the run failed (missing or corrupt data, a non-finite loss, no intact checkpoint,
  another process of a multi-host run lost);
* 143 (SIGTERM) or 130 (SIGINT): the run was interrupted after writing a checkpoint;
  the same command resumes it.
"""
import os
import sys
import time

if __name__ == "__main__":  # before JAX starts
    from alexnet_jax import prepare_process
    prepare_process()

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from alexnet_jax.runtime import checkpoints, console, distributed, errors, signals, supervisor
from alexnet_jax.training import command_line, experiment, seeds

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summary.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "",
                                   "Multi-host: HOST:PORT of process 0's coordinator service.")
_BIND_ADDRESS = flags.DEFINE_string(
    "coordinator_bind_address", "", "Multi-host: HOST:PORT process 0's coordinator listens "
    "on (default: --coordinator_address itself).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "Multi-host: this process's index.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Multi-host with the cluster detected by jax.distributed.")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 60, "Multi-host: seconds without a process's heartbeats after "
    "which the others stop, saying it was lost.")
_STOP_DEADLINE = flags.DEFINE_float(
    "stop_deadline_s", signals.STOP_DEADLINE_S, "After SIGTERM or SIGINT, seconds a process "
    "may take to reach a step where every process saves, before it exits without saving.")
_SEEDS = flags.DEFINE_list("seeds", [], "Several seeds trained together, vmapped in one "
                           "program; --workdir holds {seed} (alexnet_jax/training/seeds.py).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the traceback of an error.")

COMPILATION_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "alexnet_jax", "xla")
REJECTED, FAILED = 2, 1  # exit statuses; an interrupted run exits with 128 + the signal
REJECTIONS, FAILURES = errors.REJECTIONS, errors.FAILURES


def fail(message: object, status: int) -> None:
    """Ends the process with ``message`` as one line on stderr; verbose, an exception's
    traceback instead."""
    if console.verbose() and isinstance(message, BaseException):
        raise message
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with an unknown flag or config key, or a config file that does not
    load, as one line (exit status 2)."""
    try:
        return flags.FLAGS(argv)
    except Exception as error:  # noqa: BLE001 - a config file may raise anything
        fail(error if console.verbose() else command_line.flag_message(error, argv), REJECTED)


def _seed_list() -> list[int]:
    try:
        return [int(seed) for seed in _SEEDS.value]
    except ValueError:
        fail(f"--seeds={','.join(_SEEDS.value)}: give whole numbers, e.g. --seeds 0,1,2,3.",
             REJECTED)


def lost_peer(error: Exception) -> None:
    """A collective failed in a multi-host run: another process is gone.  Under the
    supervisor, which names it, wait for the runtime to confirm (it ends this process
    once the lost one's heartbeats are overdue); alone, say so and end."""
    supervisor.report(supervisor.LOST)
    if supervisor.supervised():
        time.sleep(_HEARTBEAT_TIMEOUT.value + 30)
    print(f"error: A collective with another process failed ({str(error).splitlines()[0]}): "
          "a process of this run was lost. Restart every process with the same command to "
          "resume from its last checkpoint.", file=sys.stderr, flush=True)
    os._exit(FAILED)  # not through jax.distributed's shutdown, which would wait for it


def main(argv):
    logging.set_verbosity(logging.WARNING)  # orbax narrates every save at INFO
    if len(argv) > 1:
        fail(f"Unexpected arguments: {' '.join(argv[1:])}", REJECTED)
    if _WORKDIR.value is None or _CONFIG.value is None:
        fail("--config and --workdir are required.", REJECTED)
    try:
        _CONFIG.value.get("seed")  # config_flags defers a file's failure to load to here
    except OSError as error:
        fail(f"--config could not be loaded: {str(error).strip().splitlines()[-1].strip()}",
             REJECTED)
    if jax.config.jax_compilation_cache_dir is None:
        # Steps are compiled per run; a resumed or repeated run loads them from here.
        jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE)
    multi_host = bool(_DISTRIBUTED.value or _COORDINATOR.value or _NUM_PROCESSES.value
                      or os.environ.get("JAX_COORDINATOR_ADDRESS"))
    if multi_host and not supervisor.supervised():
        sys.exit(supervisor.supervise(
            [sys.executable, *sys.orig_argv[1:]], checkpoints.directory_of(_WORKDIR.value),
            *distributed.process_identity(_PROCESS_ID.value, _NUM_PROCESSES.value)))
    if multi_host:
        distributed.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                        _PROCESS_ID.value, _HEARTBEAT_TIMEOUT.value,
                                        _BIND_ADDRESS.value)
    try:
        if _SEEDS.value:
            seeds.train_seeds(_CONFIG.value, _seed_list(), _WORKDIR.value, _STOP_DEADLINE.value)
        else:
            experiment.train_and_evaluate(_CONFIG.value, _WORKDIR.value, _STOP_DEADLINE.value)
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" in str(error):
            fail(command_line.out_of_memory(error, _CONFIG.value), FAILED)
        if jax.process_count() == 1:
            raise
        lost_peer(error)
    except signals.TrainingInterrupted as stop:
        print(stop, file=sys.stderr)
        sys.exit(128 + stop.signum)
    except REJECTIONS as error:
        fail(error, REJECTED)
    except FAILURES as error:
        fail(error, FAILED)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
