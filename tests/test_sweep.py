"""Sweeps: grid expansion and naming, skip and resume, aggregation against hand-computed numbers."""
import csv
import json
import math
import os

import pytest

from alexnet_jax import summary, sweep
from alexnet_jax.config_base import base_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_grid_expands_to_every_combination_with_readable_names():
    definition = {"base": "experiments/fashion_mnist.py", "seeds": [0, 1],
                  "grid": {"model.norm": ["lrn", "none"], "model.pool": ["overlapping",
                                                                         "non_overlapping"]},
                  "overrides": {"num_epochs": 1}, "quick": {"data.max_train_examples": 64}}
    runs = sweep.plan(definition)
    assert [r.name for r in runs[:3]] == ["norm=lrn_pool=overlapping-seed0",
                                          "norm=lrn_pool=overlapping-seed1",
                                          "norm=lrn_pool=non_overlapping-seed0"]
    assert len(runs) == 8 and len({r.name for r in runs}) == 8
    overrides = dict(runs[3].overrides)
    assert overrides == {"model.norm": "lrn", "model.pool": "non_overlapping", "num_epochs": 1,
                         "seed": 1}
    assert "data.max_train_examples" not in overrides
    assert dict(sweep.plan(definition, quick=True)[0].overrides)["data.max_train_examples"] == 64
    flags = sweep.command(definition, runs[3], "/w")
    assert "--config.model.pool=non_overlapping" in flags and "--config.seed=1" in flags
    assert flags[flags.index("--workdir") + 1] == "/w/norm=lrn_pool=non_overlapping-seed1"


@pytest.mark.parametrize("name", ["lrn_vs_bn", "paper_claims"])
def test_sweep_files_load_and_name_their_variants(name):
    definition = sweep.load_sweep(os.path.join(REPO, "experiments", "sweeps", f"{name}.py"))
    runs = sweep.plan(definition)
    assert len({r.variant for r in runs}) >= 4 and len({r.seed for r in runs}) >= 3
    assert definition["baseline"] == runs[0].variant


def test_bad_sweep_files_say_what_is_wrong(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("def get_sweep():\n    return {'base': 'x', 'grid': {}, 'variants': [], "
                    "'seed': [0]}\n")
    with pytest.raises(ValueError, match=r"Unknown sweep key\(s\) \['seed'\]"):
        sweep.load_sweep(str(path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sweep.load_sweep(str(tmp_path / "missing.py"))


def test_paired_difference_and_interval_by_hand():
    # differences 0.01, 0.03, 0.02: mean 0.02, sd 0.01, t(0.975, 2) = 4.302653
    mean, half = sweep.difference_interval([0.11, 0.13, 0.12], [0.10, 0.10, 0.10])
    assert math.isclose(mean, 0.02, abs_tol=1e-12)
    assert math.isclose(half, 4.302653 * 0.01 / math.sqrt(3), rel_tol=1e-6)
    assert sweep.mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, math.sqrt(5 / 3))


def fake_run(workdir, run, top1, curve, train_errors):
    path = os.path.join(workdir, run.name)
    os.makedirs(path)
    json.dump({"test_top1_error": top1, "test_top5_error": top1 / 10,
               "best_test_top1_error": top1, "best_test_top5_error": top1 / 10,
               "wall_s": 100.0, "steps": 40}, open(os.path.join(path, "summary.json"), "w"))
    config = base_config()
    config.model.variant = "small"
    open(os.path.join(path, "config.json"), "w").write(config.to_json())
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for step, error in train_errors:
            f.write(json.dumps({"step": step, "train_top1_error": error}) + "\n")
        for epoch, error in curve:
            f.write(json.dumps({"step": 20 * epoch, "epoch": epoch,
                                "test_top1_error": error}) + "\n")


def test_report_aggregates_finished_runs_and_skips_them(tmp_path):
    definition = {"base": "experiments/fashion_mnist.py", "seeds": [0, 1],
                  "variants": [("base", {}), ("other", {"model.norm": "none"})]}
    runs = sweep.plan(definition)
    errors = {"base-seed0": 0.10, "base-seed1": 0.12, "other-seed0": 0.13, "other-seed1": 0.14}
    workdir = str(tmp_path)
    for run in runs:
        fake_run(workdir, run, errors[run.name], [(1, 0.3), (2, errors[run.name])],
                 [(10, 0.5), (20, 0.24 if run.variant == "base" else 0.3), (30, 0.2)])
    assert all(sweep.is_finished(workdir, r) for r in runs)
    assert sweep.execute(definition, runs, workdir) == []  # nothing left to run
    diverged = sweep.Run("other", 2, ())
    os.makedirs(os.path.join(workdir, diverged.name))
    with open(os.path.join(workdir, diverged.name, "console.log"), "w") as f:
        f.write("training...\nerror: Training loss became nan by step 50; stopping.\n")
    runs = runs + [diverged]
    rows = {r["variant"]: r for r in sweep.report(definition, runs, workdir, "test")}
    small = base_config()
    small.model.variant = "small"
    assert rows["base"]["params"] == summary.summarize(small)["params"]
    assert rows["base"]["test_top1_error"][0] == pytest.approx(0.11)
    assert rows["base"]["test_top1_error"][1] == pytest.approx(math.sqrt(0.0002))
    mean, half = rows["other"]["difference"]  # paired: 0.03 and 0.02
    assert mean == pytest.approx(0.025)
    assert half == pytest.approx(12.706205 * math.sqrt(0.00005) / math.sqrt(2), rel=1e-6)
    assert rows["base"]["steps_to_25pct_train_error"][0] == 20
    assert rows["other"]["steps_to_25pct_train_error"][0] == 30
    table = open(tmp_path / "results.md").read()
    assert "| other | 2 |" in table and "+2.50 ± " in table and "(baseline)" in table
    assert "1 of 5 runs did not finish" in table
    assert "`other-seed2`: error: Training loss became nan by step 50" in table
    with open(tmp_path / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["run"] for r in csv_rows] == [r.name for r in runs[:4]]
    assert csv_rows[2]["overrides"] == "model.norm=none"
    assert os.path.getsize(tmp_path / "curves.png") > 0 and os.path.getsize(tmp_path / "bars.png") > 0


@pytest.mark.skipif(not os.path.exists(os.path.join(REPO, "data", "fashion-mnist")),
                    reason="Fashion-MNIST absent: run `make data`")
def test_quick_sweep_runs_through_the_trainer_and_resumes(tmp_path):
    """Two real (tiny) runs through alexnet_jax.main at once; a second call runs nothing.
    (An unfinished run is started again with the same command, which resumes it: the
    trainer's resume is tested in test_checkpoints.py.)"""
    path = tmp_path / "tiny.py"
    path.write_text(
        "def get_sweep():\n    return {'base': 'experiments/fashion_mnist.py', 'seeds': [0],\n"
        "            'variants': [('lrn', {}), ('none', {'model.norm': 'none'})],\n"
        "            'overrides': {'num_epochs': 1, 'log_every_steps': 2},\n"
        "            'quick': {'data.max_train_examples': 256, 'data.max_test_examples': 128,\n"
        f"                      'data.data_dir': '{os.path.join(REPO, 'data')}',\n"
        "                      'checkpoint.async_save': False}}\n")
    workdir = str(tmp_path / "sweep")
    assert sweep.run_sweep(str(path), workdir, parallel=2, quick=True) == 0
    first = open(os.path.join(workdir, "results.csv")).read()
    assert "lrn-seed0" in first and "none-seed0" in first
    summary = json.load(open(os.path.join(workdir, "none-seed0", "summary.json")))
    assert summary["steps"] == 4
    mtime = os.path.getmtime(os.path.join(workdir, "lrn-seed0", "summary.json"))
    assert sweep.run_sweep(str(path), workdir, quick=True) == 0
    assert os.path.getmtime(os.path.join(workdir, "lrn-seed0", "summary.json")) == mtime
