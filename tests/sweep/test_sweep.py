"""Sweeps: grid expansion and naming, skip and resume, aggregation against hand-computed numbers."""
import csv
import json
import os
import re

import pytest

import alexnet_jax.sweep as sweep_package
from alexnet_jax import sweep
from alexnet_jax.sweep import checks
from support import fake_run, sweep_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


@pytest.mark.parametrize("name,variants,grid_runs", [("lrn_vs_bn", 5, 15),
                                                     ("paper_claims", 5, 15),
                                                     ("large_batch", 3, 10)])
def test_the_studies_tune_each_variant_then_run_three_seeds(name, variants, grid_runs):
    definition = sweep.load_sweep(os.path.join(REPO, "experiments", "sweeps", f"{name}.py"))
    grid = sweep.plan(definition)
    assert len(grid) == grid_runs and {r.seed for r in grid} == {0}
    choices = {r.variant: r.setting for r in grid}
    assert len(sweep.plan_seeds(definition, choices)) == 3 * variants
    assert definition["baseline"] == grid[0].variant
    assert dict(grid[0].overrides)["data.validation_examples"] == 5000


@pytest.mark.parametrize("name", ["lrn_vs_bn", "paper_claims", "large_batch"])
def test_the_studies_kept_in_docs_are_what_their_sweep_files_run_today(name):
    """Every run kept under a name the sweep plans was made with the config the sweep file
    builds for that name now (its config hash): a change to the default experiment that
    the sweep does not pin would make the study unrepeatable, and the sweep refuse it."""
    definition = sweep.load_sweep(os.path.join(REPO, "experiments", "sweeps", f"{name}.py"))
    study = os.path.join(REPO, "docs", "studies", name)
    hashes = checks.run_hashes(definition, sweep_package.candidate_runs(definition, False), 1)
    kept = [d for d in os.listdir(study) if d in hashes]
    assert len(kept) >= len(sweep.plan(definition))
    assert checks.stale_runs(study, hashes) == []


def test_bad_sweep_files_say_what_is_wrong(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("def get_sweep():\n    return {'base': 'x', 'grid': {}, 'variants': [], "
                    "'seed': [0]}\n")
    with pytest.raises(ValueError, match=r"Unknown sweep key\(s\) \['seed'\]"):
        sweep.load_sweep(str(path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sweep.load_sweep(str(tmp_path / "missing.py"))


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


def test_each_variant_may_have_its_own_grid_and_a_grid_must_name_every_variant(tmp_path):
    """SGD's and LARS's rates lie on different scales: each variant tunes on its own grid,
    then runs its seeds at its own choice."""
    own = {**TUNED, "variants": [("sgd", {}), ("lars", {"optim.optimizer": "lars"})],
           "baseline": "sgd", "tune": {"sgd": {"optim.learning_rate": [0.1, 0.01]},
                                       "lars": {"optim.learning_rate": [1.0, 3.0, 10.0]}}}
    assert [r.name for r in sweep.plan(own)] == [
        "sgd-lr=0.1-seed0", "sgd-lr=0.01-seed0",
        "lars-lr=1.0-seed0", "lars-lr=3.0-seed0", "lars-lr=10.0-seed0"]
    assert {r.name for r in sweep.candidate_runs(own, quick=False)} == {
        f"{v}-lr={lr}-seed{s}" for v, rates in (("sgd", (0.01, 0.1)), ("lars", (1.0, 3.0, 10.0)))
        for lr in rates for s in (0, 1, 2)}
    workdir = str(tmp_path)
    for run, validation in zip(sweep.plan(own), (0.10, 0.12, 0.15, 0.09, 0.11)):
        fake_run(workdir, run, 0.1, [(1, 0.1)], [(10, 0.3)], validation=validation)
    choices, outcomes = sweep.choose(own, sweep.plan(own), workdir)
    assert choices == {"sgd": (("optim.learning_rate", 0.1),),
                       "lars": (("optim.learning_rate", 3.0),)}
    table = sweep.tuning_table(own, choices, outcomes, workdir)  # columns by value
    assert "| variant | lr=0.01 | lr=0.1 | lr=1.0 | lr=3.0 | lr=10.0 | chosen |" in table
    assert "| sgd | 12.00 | **10.00** |  |  |  | lr=0.1 |" in table
    assert "| lars |  |  | 15.00 | **9.00** | 11.00 | lr=3.0 |" in table
    for tune, message in (({"sgd": {"optim.learning_rate": [0.1]}}, r"no grid for \['lars'\]"),
                          ({"sgd": {"optim.learning_rate": [0.1]}, "lars": {}, "adam": {}},
                           r"no variant \['adam'\]"),
                          ({"sgd": {"optim.learning_rate": [0.1]}, "optim.momentum": [0.9]},
                           "mixes the two")):
        path = tmp_path / "own.py"
        path.write_text(f"def get_sweep():\n    return {({**own, 'tune': tune})!r}\n")
        with pytest.raises(ValueError, match=message):
            sweep.load_sweep(str(path))


def test_tuning_needs_a_validation_split(tmp_path):
    path = tmp_path / "tuned.py"
    path.write_text("def get_sweep():\n    return {'base': 'x', 'variants': [('a', {})], "
                    "'tune': {'optim.learning_rate': [0.1]}}\n")
    with pytest.raises(ValueError, match="set 'data.validation_examples' in 'overrides'"):
        sweep.load_sweep(str(path))


@pytest.mark.long
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


# --- checks before launching: bad variants, stale runs, identical runs ------------------

def plant(workdir, definition, run, top1=0.1, wall=100.0, overrides=()):
    """A finished run as the trainer leaves it: config.json and summary.json with the hash
    of the config it trained with (the sweep's for ``run``, changed by ``overrides``)."""
    from alexnet_jax.sweep.plan import resolved_config
    from alexnet_jax.training.config_base import config_hash
    config = resolved_config(definition, run)
    config.update_from_flattened_dict(dict(overrides))
    path = os.path.join(workdir, run.name)
    os.makedirs(path, exist_ok=True)
    digest = config_hash(config)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({**json.loads(config.to_json()), "config_hash": digest}, f)
    with open(os.path.join(path, "summary.json"), "w") as f:
        json.dump({"test_top1_error": top1, "test_top5_error": top1 / 10,
                   "best_test_top1_error": top1, "best_test_top5_error": top1 / 10,
                   "wall_s": wall, "steps": 10, "config_hash": digest}, f)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 10, "epoch": 1, "test_top1_error": top1}) + "\n")


class FakeLauncher:
    """Stands in for the trainer's processes: plants each launched run with the error
    ``errors(run)`` gives, and records what was launched."""

    def __init__(self, errors):
        self.errors, self.launched = errors, []

    def __call__(self, definition, runs, workdir, *args):
        for run in runs:
            if not sweep.is_finished(workdir, run):
                self.launched.append(run.name)
                plant(workdir, definition, run, self.errors(run))
        return []


@pytest.fixture
def fake_launcher(monkeypatch):
    def install(errors=lambda run: 0.1):
        launcher = FakeLauncher(errors)
        monkeypatch.setattr(sweep_package, "launch", launcher)
        return launcher
    return install


def run_main(*argv):
    """``python -m alexnet_jax.sweep``'s main with these flags: (status, stderr)."""
    import contextlib
    import io

    from absl import flags

    from alexnet_jax.sweep import __main__ as cli
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["sweep", *argv])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = cli.main(["sweep"])
    return status, err.getvalue()


@pytest.mark.parametrize("variant,message", [
    ("'model.norm': 'batchnrom'", r"variant 'other' \(run other-seed0\): "
                                  r"config.model.norm='batchnrom' is not one of: lrn"),
    ("'model.nrom': 'lrn'", r"variant 'other' \(run other-seed0\): the config has no key "
                            r"'model.nrom'; did you mean 'model.norm'\?"),
    ("'batch_size': 0", r"variant 'other' .*config.batch_size=0 must be at least 1")])
@pytest.mark.parametrize("launcher", ["local", "slurm"])
def test_a_bad_variant_is_one_line_and_nothing_starts(tmp_path, fake_launcher, variant,
                                                      message, launcher):
    fake = fake_launcher()
    workdir = str(tmp_path / "w")
    status, err = run_main("--sweep", sweep_file(tmp_path, variant), "--workdir", workdir,
                           "--launcher", launcher)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert re.match("error: " + message, err)
    assert fake.launched == [] and not os.path.exists(workdir)


def test_report_with_no_finished_run_is_one_line(tmp_path):
    status, err = run_main("--sweep", sweep_file(tmp_path), "--workdir", str(tmp_path / "w"),
                           "--report")
    assert status == 2
    assert err == (f"error: No run under {tmp_path / 'w'} has finished: nothing to report "
                   "yet. Run the sweep first (the same command without --report).\n")


def test_a_run_made_with_another_config_is_refused_then_moved_aside_and_rerun(
        tmp_path, fake_launcher):
    """A finished run under a planned name, but with another learning rate than the sweep
    builds today (its overrides were edited, its name kept): never reused."""
    path = sweep_file(tmp_path)
    definition = sweep.load_sweep(path)
    workdir = str(tmp_path / "w")
    runs = {r.name: r for r in sweep.plan(definition)}
    for run in runs.values():
        plant(workdir, definition, run)
    plant(workdir, definition, runs["other-seed1"], 0.5,
          overrides={"optim.learning_rate": 0.2})
    fake = fake_launcher()
    with pytest.raises(sweep.SweepError, match=r"1 run\(s\) .* another config .*: "
                                               r"other-seed1\. .*add --rerun_stale"):
        sweep.run_sweep(path, workdir)
    assert fake.launched == []
    assert json.load(open(os.path.join(workdir, "other-seed1", "summary.json")))[
        "test_top1_error"] == 0.5  # untouched
    assert sweep.run_sweep(path, workdir, rerun_stale=True) == 0
    assert fake.launched == ["other-seed1"]
    aside = os.listdir(os.path.join(workdir, "stale"))
    assert len(aside) == 1 and aside[0].startswith("other-seed1-")
    assert json.load(open(os.path.join(workdir, "other-seed1", "summary.json")))[
        "test_top1_error"] == 0.1


def test_a_run_with_an_identical_config_is_reused_under_any_name(tmp_path, fake_launcher):
    """Renaming a variant keeps its runs: the new names become links to the finished runs
    with the same config; an unchanged run is simply skipped."""
    workdir = str(tmp_path / "w")
    before = sweep.load_sweep(sweep_file(tmp_path, name="before.py"))
    for run in sweep.plan(before):
        plant(workdir, before, run, 0.2 if run.variant == "other" else 0.1)
    renamed = tmp_path / "renamed.py"
    renamed.write_text(sweep_file(tmp_path, name="x.py") and
                       open(tmp_path / "x.py").read().replace("('other',", "('no_norm',"))
    fake = fake_launcher()
    assert sweep.run_sweep(str(renamed), workdir) == 0
    assert fake.launched == []
    for seed in (0, 1):
        assert os.readlink(os.path.join(workdir, f"no_norm-seed{seed}")) == f"other-seed{seed}"
    table = open(os.path.join(workdir, "results.md")).read()
    assert "| no_norm | 2 |" in table and "+10.00 ± 0.00" in table


def test_plan_lists_every_run_with_its_overrides_and_the_time_finished_runs_took(
        tmp_path, fake_launcher, capsys):
    path = sweep_file(tmp_path, extra=", 'tune': {'optim.learning_rate': [0.01, 0.03]}, "
                      "'overrides': {'num_epochs': 1, 'data.validation_examples': 100}, "
                      "'precision': 0.5, 'max_seeds': 4")
    path_text = open(path).read().replace("'overrides': {'num_epochs': 1}, ", "")
    open(path, "w").write(path_text)
    definition = sweep.load_sweep(path)
    workdir = str(tmp_path / "w")
    grid = sweep.plan(definition)
    plant(workdir, definition, grid[0], wall=600.0)  # lrn, lr 0.01: 10 min
    fake = fake_launcher()
    assert sweep.run_sweep(path, workdir, plan_only=True) == 0
    out = capsys.readouterr().out
    assert fake.launched == []
    assert out.splitlines()[0].endswith("with num_epochs=1 data.validation_examples=100")
    lines = [line.split() for line in out.splitlines() if "-seed" in line]
    assert [line[:2] for line in lines] == [["done", "lrn-lr=0.01-seed0"],
                                            ["new", "lrn-lr=0.03-seed0"],
                                            ["new", "other-lr=0.01-seed0"],
                                            ["new", "other-lr=0.03-seed0"]]
    assert lines[2][2:5] == ["model.norm=none", "optim.learning_rate=0.01", "seed=0"]
    assert all(line[-2:] == ["~10", "min"] for line in lines[1:])
    assert "up to 4 per variant" in out and "±0.5 points" in out
    # 3 new runs of 10 min; later: 2 variants x 1 more seed, then x 2 more: 6 runs of 10 min
    assert "~30 min for the runs above not yet done, and up to ~60 min for the 6 runs" in out




# --- precision: seeds in rounds until each verdict settles --------------------------------





def test_a_precision_sweep_adds_seeds_only_where_the_verdict_is_not_settled(
        tmp_path, fake_launcher):
    """Planted errors: `clear` is 2 points worse in every seed (significant after the first
    round), `same` equals the baseline to within ±0.05 points (bounded after the first
    round at precision 0.3), `noisy` swings by ±1 point (more seeds, to the cap of 6)."""
    path = tmp_path / "precise.py"
    path.write_text(
        "def get_sweep():\n"
        "    return {'base': 'experiments/fashion_mnist.py', 'seeds': [0, 1, 2],\n"
        "            'variants': [('lrn', {}), ('clear', {'model.norm': 'none'}),\n"
        "                         ('same', {'model.norm': 'batchnorm'}),\n"
        "                         ('noisy', {'model.norm': 'groupnorm'})],\n"
        "            'precision': 0.3, 'max_seeds': 6}\n")
    swings = [0.01, -0.01, 0.012, -0.009, 0.011, -0.01]

    def errors(run):
        extra = {"lrn": 0.0, "clear": 0.02 + 0.0001 * run.seed,
                 "same": 0.0005 * (-1) ** run.seed, "noisy": swings[run.seed]}[run.variant]
        return 0.1 + extra

    fake = fake_launcher(errors)
    workdir = str(tmp_path / "w")
    assert sweep.run_sweep(str(path), workdir) == 0
    launched = {v: sorted(int(n.split("seed")[1]) for n in fake.launched
                          if n.startswith(v + "-")) for v in ("lrn", "clear", "same", "noisy")}
    assert launched == {"lrn": list(range(6)), "clear": [0, 1, 2], "same": [0, 1, 2],
                        "noisy": list(range(6))}
    table = open(os.path.join(workdir, "results.md")).read()
    assert "| clear | 3 |" in table and "(significant)" in table
    assert "| same | 3 |" in table and "no difference larger than" in table
    assert "| noisy | 6 |" in table and "inconclusive at 6 seeds (±" in table
    # Started again, it runs nothing: every round's runs are on disk.
    fake.launched.clear()
    assert sweep.run_sweep(str(path), workdir) == 0 and fake.launched == []
    # --quick is a smoke test: the first seeds only, whatever the verdicts.
    assert sweep.run_sweep(str(path), str(tmp_path / "quick"), quick=True) == 0
    assert sorted(fake.launched) == sorted(f"{variant}-seed{seed}" for seed in (0, 1, 2)
                                           for variant in ("lrn", "clear", "same", "noisy"))




