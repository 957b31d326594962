"""Checkpoints: exact resume, signals, SIGKILL mid-run, corrupt and mismatched checkpoints, NaN."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax import checkpoints, metrics, optim, train  # noqa: E402
from support import build, tiny_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, "data")
HAVE_FASHION_MNIST = os.path.exists(os.path.join(DATA_DIR, "fashion-mnist",
                                                 "train-images-idx3-ubyte.gz"))


def final_params(workdir):
    config = tiny_config()
    manager = checkpoints.CheckpointManager(workdir, config)
    restored, plateau, history, _ = manager.restore_or_keep(build(config, 3).state,
                                                            optim.PlateauPolicy())
    manager.close()
    return jax.device_get(restored.params), plateau, history


def wrap_train_step(monkeypatch, wrapper):
    """Makes every run's train step ``wrapper(step)`` (train.make_steps builds them)."""
    make_steps = train.make_steps
    monkeypatch.setattr(train, "make_steps", lambda *args, **kwargs: (
        lambda steps: steps._replace(train=wrapper(steps.train)))(make_steps(*args, **kwargs)))


class StopAt:
    """Wraps the train step to deliver a signal to this process after ``step`` steps."""

    def __init__(self, step, sig, original):
        self.step, self.sig, self.calls = step, sig, 0
        self.original = original

    def __call__(self, state, batch):
        result = self.original(state, batch)
        self.calls += 1
        if self.calls == self.step:
            os.kill(os.getpid(), self.sig)
        return result


def test_sigint_and_sigterm_both_request_a_stop():
    before = signal.getsignal(signal.SIGINT)
    with train._StopSignals() as stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            stop.received = None
            os.kill(os.getpid(), sig)
            assert stop.received == sig
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_sigterm_checkpoints_and_resume_is_exact(tmp_path, monkeypatch):
    sig = signal.SIGTERM
    with tfds.testing.mock_data(num_examples=96):
        full = train.train_and_evaluate(tiny_config(), str(tmp_path / "full"))
        wrap_train_step(monkeypatch, lambda step: StopAt(4, sig, step))
        with pytest.raises(train.TrainingInterrupted, match="Run the same command again"):
            train.train_and_evaluate(tiny_config(), str(tmp_path / "cut"))
        monkeypatch.undo()
        assert checkpoints.CheckpointManager(str(tmp_path / "cut"), tiny_config()).latest.latest_step() == 4
        resumed = train.train_and_evaluate(tiny_config(), str(tmp_path / "cut"))
    a, plateau_a, history_a = final_params(str(tmp_path / "full"))
    b, plateau_b, history_b = final_params(str(tmp_path / "cut"))
    jax.tree.map(np.testing.assert_array_equal, a, b)  # bitwise
    assert plateau_a == plateau_b and history_a == history_b
    for key in ("test_top1_error", "test_top5_error", "steps", "best_test_top1_error"):
        assert full[key] == resumed[key]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "images_per_s"} for r in rs]  # noqa
    assert strip(metrics.read_metrics(str(tmp_path / "full"))) == strip(
        metrics.read_metrics(str(tmp_path / "cut")))


def test_nan_loss_stops_with_the_step_and_saves_nothing_bad(tmp_path, monkeypatch):
    def poisoning(original):
        def poisoned(state, batch):
            state, m = original(state, batch)
            if int(state.step) >= 3:
                m = {**m, "loss": m["loss"] * float("nan")}
            return state, m
        return poisoned

    wrap_train_step(monkeypatch, poisoning)
    with tfds.testing.mock_data(num_examples=96):
        with pytest.raises(FloatingPointError, match="by step 3"):
            train.train_and_evaluate(tiny_config(), str(tmp_path))
    steps = checkpoints.CheckpointManager(str(tmp_path), tiny_config()).latest.all_steps()
    assert max(steps) == 2


def test_mismatched_checkpoint_names_step_and_shapes_and_is_kept(tmp_path):
    with tfds.testing.mock_data(num_examples=96):
        train.train_and_evaluate(tiny_config(epochs=1), str(tmp_path))
        other = tiny_config(epochs=2)
        other.model.towers = 1
        with pytest.raises(checkpoints.CheckpointError, match=r"step 3 .*conv1.*shape \(2,"):
            train.train_and_evaluate(other, str(tmp_path))
    assert 3 in checkpoints.CheckpointManager(str(tmp_path), tiny_config()).latest.all_steps()


def test_corrupt_checkpoint_is_a_clear_error_and_is_not_deleted(tmp_path):
    with tfds.testing.mock_data(num_examples=96):
        train.train_and_evaluate(tiny_config(epochs=1), str(tmp_path))
        step_dir = tmp_path / "checkpoints" / "latest" / "3" / "state"
        for root, _, files in os.walk(step_dir):
            for name in files:
                if not name.startswith("_"):
                    with open(os.path.join(root, name), "wb") as f:
                        f.write(b"garbage")
        with pytest.raises(checkpoints.CheckpointError, match="step 3"):
            train.train_and_evaluate(tiny_config(epochs=2), str(tmp_path))
    assert (tmp_path / "checkpoints" / "latest" / "3").exists()


def test_half_written_step_is_never_loaded(tmp_path):
    with tfds.testing.mock_data(num_examples=96):
        train.train_and_evaluate(tiny_config(epochs=1), str(tmp_path))
        latest = tmp_path / "checkpoints" / "latest"
        # What a SIGKILL in the middle of orbax's save leaves behind.
        shutil.copytree(latest / "3", latest / "5.orbax-checkpoint-tmp-1234")
        manager = checkpoints.CheckpointManager(str(tmp_path), tiny_config())
        assert manager.latest.latest_step() == 3
        manager.close()
        summary = train.train_and_evaluate(tiny_config(epochs=2), str(tmp_path))
    assert summary["steps"] == 6


def test_full_disk_is_a_clear_error(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", no_space)
    with tfds.testing.mock_data(num_examples=96):
        with pytest.raises(checkpoints.CheckpointError, match="No space left.*earlier checkpoints"):
            train.train_and_evaluate(tiny_config(), str(tmp_path))


def test_restore_from_and_eval_only(tmp_path):
    with tfds.testing.mock_data(num_examples=96):
        first = train.train_and_evaluate(tiny_config(epochs=1), str(tmp_path / "a"))
        config = tiny_config(epochs=1)
        config.eval_only = True
        config.restore_from = str(tmp_path / "a")
        result = train.train_and_evaluate(config, str(tmp_path / "b"))
    assert result["test_top1_error"] == first["test_top1_error"]
    assert json.load(open(tmp_path / "b" / "eval.json"))["test_top1_error"] == first["test_top1_error"]


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="Fashion-MNIST absent: run `make data`")
def test_sigkill_mid_run_then_restart_equals_uninterrupted_run(tmp_path):
    args = ["--config", "experiments/fashion_mnist.py", "--config.data.max_train_examples=384",
            "--config.data.max_test_examples=200", "--config.num_epochs=2",
            "--config.batch_size=32", "--config.checkpoint.every_steps=3",
            "--config.log_every_steps=1", "--config.progress_bar=False",
            f"--config.data.data_dir={DATA_DIR}"]

    def run(workdir, **kwargs):
        return subprocess.Popen([sys.executable, "-m", "alexnet_jax.main", "--workdir", str(workdir),
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
