"""Whole runs through faults: SIGTERM and SIGKILL mid-run, a full disk; each resumes exactly."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax.runtime import checkpoints, metric_writer, signals
from alexnet_jax.training import experiment
from support import DATA_DIR, HAVE_FASHION_MNIST, StopAt, final_params, tiny_config, wrap_train_step  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def small_disk(tmp_path):
    """A 13 MB tmpfs (room for about two checkpoints of the small model); root only."""
    path = tmp_path / "disk"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=13m", "tmpfs", str(path)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield path
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.long
def test_sigterm_checkpoints_and_resume_is_exact(tmp_path, monkeypatch):
    sig = signal.SIGTERM
    with tfds.testing.mock_data(num_examples=96):
        full = experiment.train_and_evaluate(tiny_config(), str(tmp_path / "full"))
        wrap_train_step(monkeypatch, lambda step: StopAt(4, sig, step))
        with pytest.raises(signals.TrainingInterrupted, match="Run the same command again"):
            experiment.train_and_evaluate(tiny_config(), str(tmp_path / "cut"))
        monkeypatch.undo()
        manager = checkpoints.CheckpointManager(str(tmp_path / "cut"), tiny_config())
        assert manager.latest.latest_step() == 4
        resumed = experiment.train_and_evaluate(tiny_config(), str(tmp_path / "cut"))
    a, plateau_a, history_a = final_params(str(tmp_path / "full"))
    b, plateau_b, history_b = final_params(str(tmp_path / "cut"))
    jax.tree.map(np.testing.assert_array_equal, a, b)  # bitwise
    assert plateau_a == plateau_b and history_a == history_b
    for key in ("test_top1_error", "test_top5_error", "steps", "best_test_top1_error"):
        assert full[key] == resumed[key]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "images_per_s"} for r in rs]  # noqa
    assert strip(metric_writer.read_metrics(str(tmp_path / "full"))) == strip(
        metric_writer.read_metrics(str(tmp_path / "cut")))


@pytest.mark.long
def test_a_full_disk_stops_with_one_line_and_resumes_exactly_once_there_is_room(
        tmp_path, small_disk, capfd):
    """Asynchronous saves fill the disk: the run stops with the error naming the full
    file system, a checkpoint's size and the last intact step, after removing the
    unfinished save, and warned before; with room again, the same command resumes and ends
    bit for bit where a run with room all along does."""
    config = tiny_config(epochs=3, every_steps=1)
    config.checkpoint.async_save = True
    workdir = str(small_disk / "run")
    with tfds.testing.mock_data(num_examples=96):
        experiment.train_and_evaluate(config, str(tmp_path / "roomy"))
        with pytest.raises(checkpoints.CheckpointError) as stopped:
            experiment.train_and_evaluate(config, workdir)
        message = str(stopped.value)
        assert re.fullmatch(r"The file system of .*/disk/run/checkpoints is full \(.* MB free "
                            r"of 13\.0 MB\): a checkpoint needs about [\d.]+ MB; the last "
                            r"intact checkpoint is step (\d+), from which the same command "
                            r"resumes( \(the unfinished one was removed\))?\. Free space there, "
                            r"or move the run to a larger disk, then run the same command "
                            r"again\.", message), message
        assert "warning:" in capfd.readouterr().err
        for manager in ("latest", "best"):
            assert not [n for n in os.listdir(small_disk / "run" / "checkpoints" / manager)
                        if "tmp" in n]
        subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
        resumed = experiment.train_and_evaluate(config, workdir)
    roomy = json.load(open(tmp_path / "roomy" / "summary.json"))
    assert resumed["steps"] == roomy["steps"] == 9
    assert resumed["test_loss"] == roomy["test_loss"]
    jax.tree.map(np.testing.assert_array_equal, final_params(str(tmp_path / "roomy"))[0],
                 final_params(workdir)[0])


@pytest.mark.long
@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="Fashion-MNIST absent: run `make data`")
def test_sigkill_mid_run_then_restart_equals_uninterrupted_run(tmp_path):
    args = ["--config", "experiments/fashion_mnist.py", "--config.data.max_train_examples=384",
            "--config.data.max_test_examples=200", "--config.num_epochs=2",
            "--config.batch_size=32", "--config.checkpoint.every_steps=3",
            "--config.log_every_steps=1", "--config.progress_bar=False",
            f"--config.data.data_dir={DATA_DIR}"]

    def run(workdir, **kwargs):
        return subprocess.Popen([sys.executable, "-m", "alexnet_jax.main",
                                 "--workdir", str(workdir),
                                 *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, **kwargs)

    full_run = run(tmp_path / "full")  # alongside the victim: start-up is mostly one core
    victim = run(tmp_path / "cut")
    records = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill somewhere after the first checkpoints
        if records.exists() and len(records.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert full_run.wait(timeout=300) == 0
    restarted = run(tmp_path / "cut")
    output = restarted.communicate(timeout=300)[0]
    assert restarted.returncode == 0, output
    assert "Resuming from the checkpoint of step" in output
    full = json.load(open(tmp_path / "full" / "summary.json"))
    cut = json.load(open(tmp_path / "cut" / "summary.json"))
    assert full["steps"] == cut["steps"] == 24
    assert full["test_top1_error"] == cut["test_top1_error"]
    a, b = (ocp.StandardCheckpointer().restore(
        tmp_path / d / "checkpoints" / "latest" / "24" / "state") for d in ("full", "cut"))
    jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
