"""How a sweep's runs are started: local processes, or SLURM jobs through submitit.

Either way a run is its command line (``plan.command``: ``python -m alexnet_jax.main``)
with its console output in ``DIR/<run>/console.log``; a finished run (its
``summary.json`` exists) is skipped, and an unfinished one resumes from its checkpoint.

* ``local``: up to ``parallel`` processes at once on this machine.
* ``slurm``: the runs of a stage as one SLURM job array (``submitit``), ``parallel`` of
  them at once; a job that SLURM preempts or times out asks its run to checkpoint
  (SIGTERM) and is requeued, and the requeued job resumes from that checkpoint.
* ``submitit_local``: the same jobs through submitit's local executor, without SLURM.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from typing import Any, Sequence

from alexnet_jax.sweep.plan import REPO, Run, command, diverged, is_finished

LAUNCHERS = ("local", "slurm", "submitit_local")


@dataclasses.dataclass(frozen=True)
class ClusterOptions:
    """What each SLURM job of a run asks for."""

    partition: str = ""
    time_min: int = 24 * 60
    gpus_per_run: int = 0
    cpus_per_run: int = 8
    mem_gb: int = 32


def launch(sweep: dict[str, Any], runs: Sequence[Run], workdir: str, launcher: str = "local",
           parallel: int = 1, cluster: ClusterOptions = ClusterOptions()) -> list[str]:
    """Runs what is not finished of ``runs``; returns the names of those that failed."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"Unknown launcher {launcher!r}; valid ones are: {', '.join(LAUNCHERS)}.")
    pending = [r for r in runs if not is_finished(workdir, r)]
    print(f"Sweep: {len(runs)} runs, {len(runs) - len(pending)} already finished, "
          f"{len(pending)} to run ({launcher}, {parallel} at a time).", flush=True)
    if not pending:
        return []
    for run in pending:
        os.makedirs(os.path.join(workdir, run.name), exist_ok=True)
    if launcher == "local":
        return _run_locally(sweep, pending, workdir, parallel)
    return _run_with_submitit(sweep, pending, workdir, parallel, cluster,
                              "slurm" if launcher == "slurm" else "local")


def _console(workdir: str, run: Run) -> str:
    return os.path.join(workdir, run.name, "console.log")


def outcome(workdir: str, run: Run, returncode: int) -> str:
    """How a run ended: "done", "diverged" (its loss became NaN or infinite: a result of the
    sweep, not a failure) or "FAILED (status)"."""
    if returncode == 0:
        return "done"
    return "diverged" if diverged(workdir, run) else f"FAILED ({returncode})"


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # the same as Ctrl-C: the runs checkpoint, the sweep stops


def _run_locally(sweep: dict[str, Any], pending: list[Run], workdir: str, parallel: int
                 ) -> list[str]:
    """Up to ``parallel`` runs at once; SIGTERM or Ctrl-C stops them all (each writes a
    checkpoint: the same command resumes them) and the sweep."""
    active: dict[str, tuple[Run, subprocess.Popen, float, Any]] = {}
    failed: list[str] = []
    start, done, total = time.time(), 0, len(pending)
    pending = list(pending)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        while pending or active:
            while pending and len(active) < parallel:
                run = pending.pop(0)
                log = open(_console(workdir, run), "a")
                resumed = os.path.isdir(os.path.join(workdir, run.name, "checkpoints"))
                print(f"  start  {run.name}{' (resuming)' if resumed else ''}", flush=True)
                process = subprocess.Popen(command(sweep, run, workdir), cwd=REPO, stdout=log,
                                           stderr=subprocess.STDOUT)
                active[run.name] = (run, process, time.time(), log)
            time.sleep(0.5)
            for name, (run, process, started, log) in list(active.items()):
                if process.poll() is None:
                    continue
                log.close()
                del active[name]
                done += 1
                status = outcome(workdir, run, process.returncode)
                if status.startswith("FAILED"):
                    failed.append(name)
                print(f"  {status:<6} {name} in {time.time() - started:.0f} s   "
                      f"[{done}/{total} runs, {(time.time() - start) / 60:.1f} min]", flush=True)
    except KeyboardInterrupt:
        for _, process, _, _ in active.values():
            process.terminate()  # each run checkpoints on SIGTERM and resumes next time
        for _, process, _, _ in active.values():
            process.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return failed


class TrainingJob:
    """One run as a submitit job: its command line in a child process, so that the job is
    what a local run is.  When SLURM is about to preempt or time out the job, submitit
    calls ``checkpoint``: the run is asked to stop (SIGTERM: it writes a checkpoint and
    exits) and the same job is requeued, to resume from that checkpoint."""

    def __init__(self):
        self._process: subprocess.Popen | None = None

    def __call__(self, argv: list[str], log_path: str) -> int:
        with open(log_path, "a") as log:
            self._process = subprocess.Popen(argv, cwd=REPO, stdout=log,
                                             stderr=subprocess.STDOUT)
            return self._process.wait()

    def checkpoint(self, argv: list[str], log_path: str) -> Any:
        import submitit
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            self._process.wait()
        return submitit.helpers.DelayedSubmission(TrainingJob(), argv, log_path)


def _run_with_submitit(sweep: dict[str, Any], pending: list[Run], workdir: str, parallel: int,
                       cluster: ClusterOptions, kind: str) -> list[str]:
    import submitit
    executor = submitit.AutoExecutor(folder=os.path.join(workdir, "submitit", "%j"), cluster=kind)
    parameters: dict[str, Any] = {"name": "alexnet_jax", "timeout_min": cluster.time_min}
    if kind == "slurm":
        parameters.update(slurm_array_parallelism=parallel, cpus_per_task=cluster.cpus_per_run,
                          gpus_per_node=cluster.gpus_per_run, mem_gb=cluster.mem_gb,
                          slurm_signal_delay_s=120)
        if cluster.partition:
            parameters["slurm_partition"] = cluster.partition
    executor.update_parameters(**parameters)
    jobs = executor.map_array(TrainingJob(), [command(sweep, run, workdir) for run in pending],
                              [_console(workdir, run) for run in pending])
    print(f"  submitted {len(jobs)} job(s): {', '.join(job.job_id for job in jobs[:4])}"
          f"{' ...' if len(jobs) > 4 else ''}", flush=True)
    failed = []
    for run, job in zip(pending, jobs):
        try:
            status = job.result()
        except submitit.core.utils.UncompletedJobError as error:
            print(f"  FAILED {run.name}: {str(error).splitlines()[0]}", flush=True)
            failed.append(run.name)
            continue
        ended = outcome(workdir, run, status)
        print(f"  {ended:<6} {run.name}", flush=True)
        if ended.startswith("FAILED"):
            failed.append(run.name)
    return failed
