"""How the runs are launched: one job per run, or one per variant and setting's seeds."""
import os

from alexnet_jax import sweep
from support import sweep_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_vmapped_seeds_run_as_one_process_per_variant_and_setting(tmp_path):
    """--vmap_seeds: the pending seeds of a variant and setting are one job whose command
    trains them together (--seeds, the seed in the workdir as {seed}); a variant with one
    pending seed stays a run of its own."""
    from alexnet_jax.sweep.launch import jobs_for
    definition = sweep.load_sweep(sweep_file(tmp_path))
    runs = [r for r in sweep.plan(definition) if r.name != "other-seed1"]
    jobs = jobs_for(definition, runs, str(tmp_path), vmap_seeds=True)
    assert [(job.name, [r.name for r in job.runs]) for job in jobs] == [
        ("lrn-seeds0-1", ["lrn-seed0", "lrn-seed1"]), ("other-seed0", ["other-seed0"])]
    argv = list(jobs[0].argv)
    assert argv[argv.index("--workdir") + 1] == str(tmp_path / "lrn-seed{seed}")
    assert "--seeds=0,1" in argv and not any(a.startswith("--config.seed=") for a in argv)
    assert "--config.seed=0" in jobs[1].argv and "--seeds" not in " ".join(jobs[1].argv)
    assert [job.name for job in jobs_for(definition, runs, str(tmp_path), False)] == [
        "lrn-seed0", "lrn-seed1", "other-seed0"]
    # The planner writes the trainer's placeholder and shared workdir without importing it.
    from alexnet_jax.sweep.plan import SEED
    from alexnet_jax.training import seeds
    assert SEED == seeds.SEED
    runs_dirs, shared = seeds.workdirs(argv[argv.index("--workdir") + 1], [0, 1])
    assert shared == str(tmp_path / jobs[0].name)
    assert runs_dirs == [str(tmp_path / "lrn-seed0"), str(tmp_path / "lrn-seed1")]
