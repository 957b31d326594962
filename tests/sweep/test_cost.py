"""What --plan expects a run to take: from finished runs, or from a probe."""
import os

import pytest

from alexnet_jax import sweep
from support import sweep_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.long
def test_plan_without_finished_runs_probes_the_training_step(tmp_path, capsys):
    path = sweep_file(tmp_path)
    assert sweep.run_sweep(path, str(tmp_path / "w"), plan_only=True, quick=True) == 0
    out = capsys.readouterr().out
    assert "probe of lrn's run: a process's start-up, its data's" in out
    estimates = [line.split()[-2:] for line in out.splitlines() if "-seed" in line]
    assert len(estimates) == 4 and all(unit in ("s", "min") for _, unit in estimates)
    seconds = [float(number.lstrip("~")) * {"s": 1, "min": 60}[unit]
               for number, unit in estimates]
    # An epoch of the default experiment: its steps, and a process's start-up, data and
    # compilation, which a plan without them (the old ~0 min) left out; not a timing.
    assert all(5 < s < 3600 for s in seconds), seconds


def test_the_estimate_counts_start_up_and_each_program_compiled_once(tmp_path, monkeypatch):
    """Without finished runs: the probe's run time, its compilation once per variant and
    setting (the other runs load the programs from the cache).  With finished runs: their
    wall time and their process's start before it."""
    from alexnet_jax.sweep import cost
    from alexnet_jax.sweep.plan import Run
    monkeypatch.setattr(cost, "probe_seconds", lambda config: (100.0, 40.0))
    runs = [Run("a", seed, ()) for seed in range(4)] + \
        [Run("b", seed, (), (("optim.learning_rate", lr),)) for seed in (0, 1)
         for lr in (0.01, 0.1)]
    definition = sweep.load_sweep(sweep_file(tmp_path))
    per_run, source = cost.estimate(definition, runs, str(tmp_path / "none"))
    assert per_run == {"a": 60.0 + 40.0 / 4, "b": 60.0 + 40.0 * 2 / 4}
    assert "start-up" in source
    run_dir = tmp_path / "w" / "a-seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text('{"wall_s": 10.0, "start_s": 2.5}')
    per_run, _ = cost.estimate(definition, runs, str(tmp_path / "w"))
    assert per_run == {"a": 12.5, "b": 12.5}
    from alexnet_jax.sweep.preview import duration
    assert [duration(s) for s in (45, 720, 3 * 3600)] == ["45 s", "12 min", "3.0 h"]
