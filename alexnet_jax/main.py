"""Trains an experiment config.

    python -m alexnet_jax.main --config experiments/fashion_mnist.py --workdir runs/fm \\
        [--config.model.norm=batchnorm ...]

Running it again on the same workdir resumes from the latest checkpoint.  Multi-host:
start one process per host with ``--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`` (or ``--distributed`` where JAX detects the cluster: Cloud TPU,
SLURM, Open MPI); see README "Multi-device and multi-host".
"""
import os

if __name__ == "__main__":  # before JAX starts: see kernels/huge_pages.py
    from alexnet_jax.kernels import huge_pages
    huge_pages.restart_with_huge_pages()

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from alexnet_jax import checkpoints, input_pipeline, parallel, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summary.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "",
                                   "Multi-host: HOST:PORT of process 0's coordinator service.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "Multi-host: this process's index.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Multi-host with the cluster detected by jax.distributed.")


COMPILATION_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "alexnet_jax", "xla")


def main(argv):
    logging.set_verbosity(logging.WARNING)  # orbax narrates every save at INFO
    if jax.config.jax_compilation_cache_dir is None:
        # Steps are compiled per run; a resumed or repeated run loads them from here.
        jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if (_DISTRIBUTED.value or _COORDINATOR.value or _NUM_PROCESSES.value
            or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                        _PROCESS_ID.value)
    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except train.TrainingInterrupted as stop:
        print(stop)
        raise SystemExit(0) from None
    except (input_pipeline.DatasetUnavailableError, checkpoints.CheckpointError,
            FloatingPointError, PermissionError, parallel.LayoutError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
