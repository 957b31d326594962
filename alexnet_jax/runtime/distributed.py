"""Multi-host start-up: which process this is, and ``jax.distributed`` started with gloo
for CPU collectives and the coordinator bound where it was told."""
from __future__ import annotations

import os

import jax


def process_identity(process_id: int = -1, num_processes: int = 0) -> tuple[int, int]:
    """(this process's index, the number of processes) as given, or as JAX will read them
    from the environment: its own variables, SLURM's or Open MPI's (-1 and 0 where JAX
    asks the cluster itself, as on Cloud TPU)."""
    def first(*names: str, missing: int) -> int:
        return next((int(os.environ[name]) for name in names if name in os.environ), missing)
    index = process_id if process_id >= 0 else first(
        "JAX_PROCESS_ID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", missing=-1)
    return index, num_processes or first(
        "JAX_NUM_PROCESSES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", missing=0)


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1, heartbeat_timeout_s: int = 60,
                           bind_address: str = "") -> None:
    """Starts ``jax.distributed`` (one process per host) before any other JAX call.

    Arguments left unset are read from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``
    and ``JAX_PROCESS_ID``; where those are unset too, JAX detects the cluster itself
    (Cloud TPU, SLURM, Open MPI).  CPU processes exchange data through gloo.  A process
    whose heartbeats stop for ``heartbeat_timeout_s`` is taken for lost, and the others
    end (``supervisor.py``).  Process 0's coordinator listens on ``bind_address`` where
    given, else on the coordinator address itself (JAX's own default is every interface);
    where JAX detects the cluster and no address is given, JAX chooses.  The coordinator
    has no authentication: it belongs on a private network.
    """
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    index, count = process_identity(process_id, num_processes)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU backend only
    jax.distributed.initialize(coordinator_address=address, num_processes=count or None,
                               process_id=None if index < 0 else index,
                               heartbeat_timeout_seconds=heartbeat_timeout_s,
                               coordinator_bind_address=bind_address or address)
