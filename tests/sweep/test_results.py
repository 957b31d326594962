"""A sweep's report: aggregation of finished runs against hand-computed numbers."""
import csv
import math
import os

import pytest

from alexnet_jax import sweep
from alexnet_jax.tools import layer_table
from alexnet_jax.training.config_base import base_config
from support import fake_run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
    assert rows["base"]["params"] == layer_table.summarize(small)["params"]
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
    assert os.path.getsize(tmp_path / "curves.png") > 0
    assert os.path.getsize(tmp_path / "bars.png") > 0
