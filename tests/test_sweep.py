"""Sweeps: grid expansion and naming, skip and resume, aggregation against hand-computed numbers."""
import csv
import importlib
import json
import math
import os

import pytest

from alexnet_jax import summary, sweep
from alexnet_jax.config_base import base_config
from alexnet_jax.sweep.plan import tuning_settings

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


@pytest.mark.parametrize("name,variants", [("lrn_vs_bn", 4), ("paper_claims", 5)])
def test_the_studies_tune_each_variant_then_run_three_seeds(name, variants):
    definition = sweep.load_sweep(os.path.join(REPO, "experiments", "sweeps", f"{name}.py"))
    grid = sweep.plan(definition)
    assert len(grid) == 3 * variants and {r.seed for r in grid} == {0}
    choices = {r.variant: r.setting for r in grid}
    assert len(sweep.plan_seeds(definition, choices)) == 3 * variants
    assert definition["baseline"] == grid[0].variant
    assert dict(grid[0].overrides)["data.validation_examples"] == 5000


@pytest.mark.parametrize("name", ["lrn_vs_bn", "paper_claims"])
def test_the_studies_kept_in_docs_are_what_their_sweep_files_run_today(name):
    """Every kept run's config.json is the config its sweep file builds now: a change to
    the default experiment that the sweep does not pin would make the study unrepeatable."""
    definition = sweep.load_sweep(os.path.join(REPO, "experiments", "sweeps", f"{name}.py"))
    experiment = importlib.import_module(definition["base"].removesuffix(".py").replace("/", "."))
    grid = sweep.plan(definition)
    variants = {r.variant for r in grid}
    runs = {r.name: r for setting in tuning_settings(definition)  # every seed at each
            for r in sweep.plan_seeds(definition, dict.fromkeys(variants, setting))}
    study = os.path.join(REPO, "docs", "studies", name)
    kept = sorted(d for d in os.listdir(study)  # a diverged run kept its console only
                  if os.path.exists(os.path.join(study, d, "config.json")))
    assert len(kept) >= len(grid)
    for run_name in kept:
        config = experiment.get_config()
        config.progress_bar = False
        config.update_from_flattened_dict(dict(runs[run_name].overrides))
        rebuilt = _flattened(json.loads(config.to_json()))
        with open(os.path.join(study, run_name, "config.json")) as f:
            stored = _flattened(json.load(f))
        differences = [key for key, value in stored.items() if rebuilt.get(key) != value]
        assert differences == [], f"{run_name}: {differences}"


def _flattened(tree: dict, prefix: str = "") -> dict:
    """{"optim": {"learning_rate": 0.03}} as {"optim.learning_rate": 0.03}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flattened(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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


def fake_run(workdir, run, top1, curve, train_errors, validation=None):
    path = os.path.join(workdir, run.name)
    os.makedirs(path)
    json.dump({"test_top1_error": top1, "test_top5_error": top1 / 10,
               "validation_top1_error": validation,
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
    assert sweep.launch(definition, runs, workdir) == []  # nothing left to run
    diverged = sweep.Run("other", 2, ())
    os.makedirs(os.path.join(workdir, diverged.name))
    with open(os.path.join(workdir, diverged.name, "console.log"), "w") as f:
        f.write("training...\nerror: Training loss became nan by step 50; stopping.\n")
    runs = runs + [diverged]
    assert sweep.is_finished(workdir, diverged)  # a result: launching again would not change it
    assert sweep.launch(definition, runs, workdir) == []
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


TUNED = {"base": "experiments/fashion_mnist.py", "seeds": [0, 1, 2],
         "variants": [("lrn", {}), ("none", {"model.norm": "none"})], "baseline": "lrn",
         "overrides": {"data.validation_examples": 5000},
         "tune": {"optim.learning_rate": [0.01, 0.03, 0.1]}}


def test_a_tuned_sweep_runs_the_grid_with_the_first_seed_then_every_seed_at_the_choice(
        tmp_path):
    grid = sweep.plan(TUNED)
    assert [r.name for r in grid] == [f"{v}-lr={lr}-seed0" for v in ("lrn", "none")
                                      for lr in (0.01, 0.03, 0.1)]
    assert dict(grid[1].overrides) == {"data.validation_examples": 5000, "seed": 0,
                                       "optim.learning_rate": 0.03}
    seeds = sweep.plan_seeds(TUNED, {"lrn": (("optim.learning_rate", 0.03),),
                                     "none": (("optim.learning_rate", 0.01),)})
    assert [r.name for r in seeds] == ["lrn-lr=0.03-seed0", "lrn-lr=0.03-seed1",
                                       "lrn-lr=0.03-seed2", "none-lr=0.01-seed0",
                                       "none-lr=0.01-seed1", "none-lr=0.01-seed2"]
    assert seeds[0] == grid[1]  # the chosen tuning run is the first seed's run


def test_the_choice_reads_validation_error_only_and_never_a_diverged_run(tmp_path):
    """Planted: for lrn the test error favours lr 0.1 and the validation error lr 0.03;
    for none, lr 0.1 diverged (its loss became NaN: no summary) and would have won."""
    workdir = str(tmp_path)
    planted = {"lrn-lr=0.01-seed0": (0.12, 0.13), "lrn-lr=0.03-seed0": (0.11, 0.10),
               "lrn-lr=0.1-seed0": (0.09, 0.12), "none-lr=0.01-seed0": (0.20, 0.21),
               "none-lr=0.03-seed0": (0.15, 0.16)}
    grid = sweep.plan(TUNED)
    for run in grid:
        if run.name in planted:
            test, validation = planted[run.name]
            fake_run(workdir, run, test, [(1, test)], [(10, 0.3)], validation=validation)
    os.makedirs(os.path.join(workdir, "none-lr=0.1-seed0"))
    with open(os.path.join(workdir, "none-lr=0.1-seed0", "console.log"), "w") as f:
        f.write("error: Training loss became nan at step 12; stopping.\n")
    choices, outcomes = sweep.choose(TUNED, grid, workdir)
    assert choices == {"lrn": (("optim.learning_rate", 0.03),),
                       "none": (("optim.learning_rate", 0.03),)}
    table = sweep.tuning_table(TUNED, choices, outcomes, workdir)
    assert "| lrn | 10.00 | **9.09**" not in table  # test error is never what is shown
    assert "| lrn | 13.00 | **10.00** | 12.00 | lr=0.03 |" in table
    assert "| none | 21.00 | **16.00** | diverged | lr=0.03 |" in table


def test_tuning_needs_a_validation_split(tmp_path):
    path = tmp_path / "tuned.py"
    path.write_text("def get_sweep():\n    return {'base': 'x', 'variants': [('a', {})], "
                    "'tune': {'optim.learning_rate': [0.1]}}\n")
    with pytest.raises(ValueError, match="set 'data.validation_examples' in 'overrides'"):
        sweep.load_sweep(str(path))


@pytest.mark.skipif(not os.path.exists(os.path.join(REPO, "data", "fashion-mnist")),
                    reason="Fashion-MNIST absent: run `make data`")
def test_submitit_runs_a_sweep_as_the_local_launcher_does_and_a_rerun_runs_nothing(tmp_path):
    """The same two tiny runs through local processes and through submitit's local executor
    (the SLURM launcher's code path without SLURM): the same results table; started again,
    neither runs anything."""
    path = tmp_path / "tiny.py"
    path.write_text(
        "def get_sweep():\n    return {'base': 'experiments/fashion_mnist.py', 'seeds': [0],\n"
        "            'variants': [('lrn', {}), ('none', {'model.norm': 'none'})],\n"
        "            'overrides': {'num_epochs': 1, 'log_every_steps': 2},\n"
        "            'quick': {'data.max_train_examples': 256, 'data.max_test_examples': 128,\n"
        f"                      'data.data_dir': '{os.path.join(REPO, 'data')}',\n"
        "                      'checkpoint.async_save': False}}\n")
    tables = {}
    for launcher in ("local", "submitit_local"):
        workdir = str(tmp_path / launcher)
        assert sweep.run_sweep(str(path), workdir, parallel=2, quick=True,
                               launcher=launcher) == 0
        with open(os.path.join(workdir, "results.csv")) as f:
            tables[launcher] = [{k: v for k, v in row.items() if k != "wall_s"}
                                for row in csv.DictReader(f)]
        mtime = os.path.getmtime(os.path.join(workdir, "lrn-seed0", "summary.json"))
        assert sweep.run_sweep(str(path), workdir, quick=True, launcher=launcher) == 0
        assert os.path.getmtime(os.path.join(workdir, "lrn-seed0", "summary.json")) == mtime
    assert [r["run"] for r in tables["local"]] == ["lrn-seed0", "none-seed0"]
    assert tables["local"] == tables["submitit_local"]


def test_a_run_that_diverged_ends_as_a_result_not_a_failure(tmp_path):
    from alexnet_jax.sweep.launch import outcome
    workdir = str(tmp_path)
    endings = {"done": (0, "training...\nTest top-1 error 0.0913\n"),
               "diverged": (1, "error: Training loss became nan at step 52; stopping.\n"),
               "FAILED (1)": (1, "error: config.batch_size=0 must be at least 1.\n"),
               "FAILED (137)": (137, "training...\n")}
    for seed, (expected, (status, console)) in enumerate(endings.items()):
        run = sweep.Run("variant", seed, ())
        os.makedirs(os.path.join(workdir, run.name), exist_ok=True)
        with open(os.path.join(workdir, run.name, "console.log"), "w") as f:
            f.write(console)
        assert outcome(workdir, run, status) == expected
