"""python -m alexnet_jax.sweep --sweep FILE --workdir DIR [...]: see alexnet_jax/sweep/."""
import sys

from absl import app, flags, logging

from alexnet_jax.runtime import console
from alexnet_jax.runtime.errors import WorkdirInUseError
from alexnet_jax.sweep import LAUNCHERS, ClusterOptions, run_sweep

flags.DEFINE_string("sweep", None, "A sweep file, e.g. experiments/sweeps/lrn_vs_bn.py.")
flags.DEFINE_string("workdir", None, "The sweep's directory: one folder per run, results.")
flags.DEFINE_bool("plan", False, "Print every run, its stage, overrides and expected machine "
                  "time, then stop.")
flags.DEFINE_integer("parallel", 1, "Runs at once (local processes, or SLURM array tasks).")
flags.DEFINE_bool("quick", False, "Shrink every run (smoke test).")
flags.DEFINE_bool("report", False, "Only aggregate the finished runs.")
flags.DEFINE_bool("rerun_stale", False, "Move runs made with another config than the sweep "
                  "builds today to DIR/stale/, and run them again.")
flags.DEFINE_bool("vmap_seeds", False, "Train the pending seeds of each variant and setting "
                  "in one process, vmapped (alexnet_jax/training/seeds.py): faster on "
                  "accelerators, slower on XLA:CPU.")
flags.DEFINE_enum("launcher", "local", list(LAUNCHERS), "Where the runs go.")
flags.DEFINE_string("partition", "", "SLURM: the partition.")
flags.DEFINE_integer("time_min", 24 * 60, "SLURM: each run's time limit in minutes.")
flags.DEFINE_integer("gpus_per_run", 0, "SLURM: GPUs per run.")
flags.DEFINE_integer("cpus_per_run", 8, "SLURM: CPU cores per run.")
flags.DEFINE_integer("mem_gb", 32, "SLURM: memory per run.")
flags.mark_flags_as_required(["sweep", "workdir"])

REJECTED = 2  # a bad sweep file or variant, stale runs, nothing to report: nothing started


def main(argv: list[str]) -> int:
    console.hold_back_notices()
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    args = flags.FLAGS
    cluster = ClusterOptions(args.partition, args.time_min, args.gpus_per_run,
                             args.cpus_per_run, args.mem_gb)
    try:
        return run_sweep(args.sweep, args.workdir, args.parallel, args.quick, args.report,
                         args.launcher, cluster, args.rerun_stale, args.plan, args.vmap_seeds)
    except (FileNotFoundError, ValueError, WorkdirInUseError) as error:  # SweepError: ValueError
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return REJECTED
    except KeyboardInterrupt:
        print("Stopped: the runs wrote their checkpoints; the same command resumes the sweep.")
        return 130


if __name__ == "__main__":
    app.run(main)
