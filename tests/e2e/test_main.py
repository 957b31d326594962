"""The command line: bad input as one line on stderr with an exit status that says what
happened, and an existing run left byte for byte as it was by a rejected command."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax.training import experiment  # noqa: E402
from support import tiny_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The default experiment shrunk to the mock data's size: what `existing_run` trained.
SMALL = ["--config", os.path.join(REPO, "experiments", "fashion_mnist.py"),
         "--config.data.data_dir=/nonexistent", "--config.data.max_train_examples=96",
         "--config.data.max_test_examples=40", "--config.batch_size=32",
         "--config.eval_batch_size=40", "--config.progress_bar=False"]


def run_main(*args, mock=False, env=None):
    """``python -m alexnet_jax.main`` (under TFDS's mock data with ``mock``)."""
    entry = [os.path.join(REPO, "tests", "mock_data_main.py")] if mock else ["-m",
                                                                           "alexnet_jax.main"]
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a user runs
    return subprocess.run([sys.executable, *entry, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**environment, **(env or {})})


def snapshot(directory):
    """Every file under ``directory`` and its bytes."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


def one_line(stderr):
    """The one line of an error, among the log lines of libraries (absl's "W1128 ...")."""
    lines = [line for line in stderr.splitlines()
             if line.strip() and not re.match(r"[IWE]\d{4} ", line) and "WARNING" not in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
    """A finished run of the small model (1 epoch of mock data), as `SMALL` describes it."""
    workdir = str(tmp_path_factory.mktemp("existing") / "run")
    config = tiny_config(epochs=1, every_steps=0)
    config.optim.schedule, config.optim.learning_rate = "cosine", 0.03
    with tfds.testing.mock_data(num_examples=96):
        experiment.train_and_evaluate(config, workdir)
    return workdir


def test_unknown_config_key_is_one_line_naming_it_and_the_right_one(tmp_path):
    result = run_main(*SMALL, "--workdir", str(tmp_path / "w"), "--config.model.nrom=batchnorm")
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith("error: --config.model.nrom=batchnorm:")
    assert "did you mean 'norm'" in line
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("flag,named", [("--config.batch_size=0", "config.batch_size=0"),
                                        ("--config.model.variant=paper", "needs images of at "
                                         "least 64x64 pixels")])
def test_a_bad_value_changes_nothing_of_an_existing_run(existing_run, flag, named):
    before = snapshot(existing_run)
    result = run_main(*SMALL, "--workdir", existing_run, flag, mock=True)
    assert result.returncode == 2
    assert named in one_line(result.stderr)
    assert snapshot(existing_run) == before


@pytest.mark.long
def test_another_width_is_rejected_and_the_run_keeps_its_config(existing_run):
    before = snapshot(existing_run)
    result = run_main(*SMALL, "--workdir", existing_run, "--config.model.towers=1", mock=True)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "does not fit this config" in line and "config.json" in line
    assert snapshot(existing_run) == before


@pytest.mark.long
def test_a_damaged_checkpoint_is_one_error_line_and_no_traceback(existing_run, tmp_path):
    """Orbax's failed read leaves tensorstore callbacks aimed at its closed event loop; their
    "Event loop is closed" must not follow the error as tracebacks."""
    run = tmp_path / "run"
    shutil.copytree(existing_run, run)
    latest = run / "checkpoints" / "latest"
    (step,) = os.listdir(latest)
    for root, _, names in os.walk(latest / step / "state"):
        for name in names:
            if not name.startswith("_"):
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
    result = run_main(*SMALL, "--workdir", str(run), "--config.num_epochs=2", mock=True)
    assert result.returncode == 1
    assert "No intact checkpoint is left" in one_line(result.stderr)
    assert f"The checkpoint of step {step}" in result.stdout
    assert os.listdir(run / "checkpoints" / "damaged")[0].startswith(f"{step}-")


def test_verbose_shows_the_traceback(tmp_path):
    result = run_main(*SMALL, "--workdir", str(tmp_path / "w"), "--config.batch_size=0",
                      env={"ALEXNET_JAX_VERBOSE": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert "ConfigError: config.batch_size=0" in result.stderr


@pytest.mark.long
def test_sigterm_ends_the_run_with_its_checkpoint_and_status_143(tmp_path):
    """What a preemptible VM or Kubernetes sends: the run stops at the next step, writes
    that step's checkpoint, says how to resume and exits with 128 + SIGTERM."""
    workdir = tmp_path / "w"
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "mock_data_main.py"), *SMALL,
         "--workdir", str(workdir), "--config.num_epochs=200", "--config.log_every_steps=1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": REPO})
    records, deadline = workdir / "metrics.jsonl", time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if records.exists() and len(records.read_text().splitlines()) >= 4:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    stopped = re.search(r"Stopped by SIGTERM at step (\d+); its checkpoint is in .*Run the same "
                        r"command again to resume", stderr)
    assert stopped, stderr[-2000:]
    assert (workdir / "checkpoints" / "latest" / stopped.group(1)).is_dir()


def test_a_process_knows_its_place_in_the_group_from_slurm_and_says_whom_it_lost(
        monkeypatch, tmp_path):
    """Under srun the supervisor learns the process's index and the group's size from
    SLURM's environment (as jax.distributed does), so the survivor's line names them; where
    the cluster alone knows them (Cloud TPU), the line still reads."""
    from alexnet_jax.runtime import distributed, supervisor
    for name in ("JAX_PROCESS_ID", "JAX_NUM_PROCESSES", "OMPI_COMM_WORLD_RANK",
                 "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.process_identity() == (-1, 0)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.process_identity() == (3, 4)
    assert distributed.process_identity(1, 2) == (1, 2)  # flags first
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    assert distributed.process_identity() == (0, 4)  # JAX's own variables before SLURM's
    runtime = ["E1205 ... Task 1 heartbeat timeout ... /job:jax_worker/replica:0/task:1\n"]
    empty = str(tmp_path / "checkpoints")
    line = supervisor.lost_process_line(runtime, 120, empty, 3, 4)
    assert line.startswith("error: This is process 3: process 1 of 4 was lost at step 120 ("), line
    line = supervisor.lost_process_line([], None, empty, -1, 0)
    assert line.startswith("error: This process: another process was lost (it stopped"), line


@pytest.mark.long
def test_the_readmes_forced_device_command_works_as_written(tmp_path):
    """The README's paper split on 2 CPU devices sets only the device count: the entry point
    adds what forced devices need (their own threads, a 10-minute collective timeout:
    alexnet_jax/model/cpu/devices.py), and the run trains with tower t on device t."""
    workdir = str(tmp_path / "model")
    result = run_main(*SMALL, "--workdir", workdir, "--config.parallelism=model",
                      "--config.num_epochs=1", mock=True,
                      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["devices"] == 2 and summary["steps"] == 3
    assert summary["xla_flags"].split() == [
        "--xla_force_host_platform_device_count=2", "--xla_cpu_multi_thread_eigen=false",
        "--xla_cpu_collective_call_terminate_timeout_seconds=600"]


def test_a_command_holds_back_the_backends_notices():
    """No "Unable to initialize backend" or absl INFO line unless --verbose."""
    done = subprocess.run([sys.executable, "-m", "alexnet_jax.summary", "--config",
                           "experiments/fashion_mnist.py"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("small AlexNet"), done.stderr
    assert "Unable to initialize backend" not in done.stderr
    assert not [line for line in done.stderr.splitlines() if re.match(r"I\d{4} ", line)]
