"""How a sweep's runs are started: local processes, or SLURM jobs through submitit.

Either way a run is its command line (``plan.command``: ``python -m alexnet_jax.main``)
with its console output in ``DIR/<run>/console.log``; a finished run (its
``summary.json`` exists) is skipped, and an unfinished one resumes from its checkpoint.

* ``local``: up to ``parallel`` processes at once on this machine.
* ``slurm``: the runs of a stage as one SLURM job array (``submitit``), ``parallel`` of
  them at once; a job that SLURM preempts or times out asks its run to checkpoint
  (SIGTERM) and is requeued, and the requeued job resumes from that checkpoint.
* ``submitit_local``: the same jobs through submitit's local executor, without SLURM.

With ``vmap_seeds`` the pending seeds of each variant and setting train in one process,
vmapped (``alexnet_jax/training/seeds.py``), each writing its own run.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from alexnet_jax.runtime.process import DIE_WITH_PARENT
from alexnet_jax.sweep.plan import REPO, SEED, Run, command, diverged, is_finished

LAUNCHERS = ("local", "slurm", "submitit_local")


@dataclasses.dataclass(frozen=True)
class ClusterOptions:
    """What each SLURM job of a run asks for."""

    partition: str = ""
    time_min: int = 24 * 60
    gpus_per_run: int = 0
    cpus_per_run: int = 8
    mem_gb: int = 32


@dataclasses.dataclass(frozen=True)
class Job:
    """What one process trains: a run, or (``--vmap_seeds``) several seeds of one variant
    and setting vmapped in one program (``training/seeds.py``), each writing its own run."""

    name: str
    runs: tuple[Run, ...]
    argv: tuple[str, ...]
    log: str  # its console's output


def jobs_for(sweep: dict[str, Any], runs: Sequence[Run], workdir: str, vmap_seeds: bool
             ) -> list[Job]:
    """A job per run, or with ``vmap_seeds`` one per variant and setting that has several
    seeds to run (its console in the seeds' shared workdir, ``seeds.workdirs``)."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.variant, run.setting) if vmap_seeds else run.name, []).append(run)
    jobs = []
    for members in groups.values():
        if len(members) == 1:
            run = members[0]
            jobs.append(Job(run.name, (run,), tuple(command(sweep, run, workdir)),
                            os.path.join(workdir, run.name, "console.log")))
            continue
        seeds = [run.seed for run in members]
        argv = command(sweep, members[0], workdir, seeds)
        name = os.path.basename(argv[argv.index("--workdir") + 1]).replace(
            SEED, "s" + "-".join(map(str, seeds)))
        os.makedirs(os.path.join(workdir, name), exist_ok=True)
        jobs.append(Job(name, tuple(members), tuple(argv),
                        os.path.join(workdir, name, "console.log")))
    return jobs


def launch(sweep: dict[str, Any], runs: Sequence[Run], workdir: str, launcher: str = "local",
           parallel: int = 1, cluster: ClusterOptions = ClusterOptions(),
           vmap_seeds: bool = False) -> list[str]:
    """Runs what is not finished of ``runs``; returns the names of those that failed."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"Unknown launcher {launcher!r}; valid ones are: {', '.join(LAUNCHERS)}.")
    pending = [r for r in runs if not is_finished(workdir, r)]
    jobs = jobs_for(sweep, pending, workdir, vmap_seeds)
    print(f"Sweep: {len(runs)} runs, {len(runs) - len(pending)} already finished, "
          f"{len(pending)} to run in {len(jobs)} process(es) ({launcher}, {parallel} at a "
          "time).", flush=True)
    if not pending:
        return []
    for run in pending:
        os.makedirs(os.path.join(workdir, run.name), exist_ok=True)
    if launcher == "local":
        return _run_locally(jobs, workdir, parallel)
    return _run_with_submitit(jobs, workdir, parallel, cluster,
                              "slurm" if launcher == "slurm" else "local")


def outcome(workdir: str, run: Run, returncode: int) -> str:
    """How a run ended: "done", "diverged" (its loss became NaN or infinite: a result of the
    sweep, not a failure) or "FAILED (status)"."""
    if returncode == 0:
        return "done"
    return "diverged" if diverged(workdir, run) else f"FAILED ({returncode})"


def _ended(workdir: str, job: Job, returncode: int, took: str = "") -> list[str]:
    """Says how each of the job's runs ended; returns those that failed."""
    failed = []
    for run in job.runs:
        status = outcome(workdir, run, returncode)
        if status.startswith("FAILED"):
            failed.append(run.name)
        print(f"  {status:<6} {run.name}{took}", flush=True)
    return failed


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # the same as Ctrl-C: the runs checkpoint, the sweep stops


def child_environment() -> dict[str, str]:
    """A trainer's environment: it gets SIGTERM when this sweep dies, even by SIGKILL, so
    that no trainer is left behind to collide with the next sweep (``runtime/process.py``)."""
    return {**os.environ, DIE_WITH_PARENT: str(os.getpid())}


def _run_locally(jobs: list[Job], workdir: str, parallel: int) -> list[str]:
    """Up to ``parallel`` jobs at once; SIGTERM or Ctrl-C stops them all (each writes a
    checkpoint: the same command resumes them) and the sweep."""
    active: dict[str, tuple[Job, subprocess.Popen, float, Any]] = {}
    failed: list[str] = []
    start, done, total = time.time(), 0, len(jobs)
    pending = list(jobs)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        while pending or active:
            while pending and len(active) < parallel:
                job = pending.pop(0)
                log = open(job.log, "a")
                resumed = os.path.isdir(os.path.join(os.path.dirname(job.log), "checkpoints"))
                print(f"  start  {job.name}{' (resuming)' if resumed else ''}", flush=True)
                process = subprocess.Popen(job.argv, cwd=REPO, stdout=log,
                                           stderr=subprocess.STDOUT, env=child_environment())
                active[job.name] = (job, process, time.time(), log)
            time.sleep(0.5)
            for name, (job, process, started, log) in list(active.items()):
                if process.poll() is None:
                    continue
                log.close()
                del active[name]
                done += 1
                failed += _ended(workdir, job, process.returncode,
                                 f" in {time.time() - started:.0f} s   [{done}/{total} "
                                 f"processes, {(time.time() - start) / 60:.1f} min]")
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
    """One job as a submitit job: its command line in a child process, so that the job is
    what a local run is.  When SLURM is about to preempt or time out the job, submitit
    calls ``checkpoint``: the run is asked to stop (SIGTERM: it writes a checkpoint and
    exits) and the same job is requeued, to resume from that checkpoint."""

    def __init__(self):
        self._process: subprocess.Popen | None = None

    def __call__(self, argv: list[str], log_path: str) -> int:
        with open(log_path, "a") as log:
            self._process = subprocess.Popen(argv, cwd=REPO, stdout=log,
                                             stderr=subprocess.STDOUT,
                                             env=child_environment())
            return self._process.wait()

    def checkpoint(self, argv: list[str], log_path: str) -> Any:
        import submitit
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            self._process.wait()
        return submitit.helpers.DelayedSubmission(TrainingJob(), argv, log_path)


def _run_with_submitit(jobs: list[Job], workdir: str, parallel: int, cluster: ClusterOptions,
                       kind: str) -> list[str]:
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
    submitted = executor.map_array(TrainingJob(), [list(job.argv) for job in jobs],
                                   [job.log for job in jobs])
    print(f"  submitted {len(submitted)} job(s): "
          f"{', '.join(one.job_id for one in submitted[:4])}"
          f"{' ...' if len(submitted) > 4 else ''}", flush=True)
    failed = []
    for job, one in zip(jobs, submitted):
        try:
            status = one.result()
        except submitit.core.utils.UncompletedJobError as error:
            print(f"  FAILED {job.name}: {str(error).splitlines()[0]}", flush=True)
            failed += [run.name for run in job.runs]
            continue
        failed += _ended(workdir, job, status)
    return failed
