"""Checkpoints: exact resume, signals, SIGKILL mid-run, corrupt and mismatched checkpoints, NaN."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax import checkpoints, experiment, metrics, optim, run_io, train  # noqa: E402
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
    for sig in (signal.SIGINT, signal.SIGTERM):
        with run_io.StopSignals() as stop:
            os.kill(os.getpid(), sig)
            assert stop.received == sig
            assert stop.stop_here(7)  # one process: at once
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_a_signal_is_noted_while_the_main_thread_is_busy_outside_python():
    """The main thread in one long NumPy product (no Python bytecode runs, so Python's own
    handler waits for it to return): the watching thread notes the signal meanwhile."""
    a = np.ones((5000, 5000), np.float64)
    with run_io.StopSignals() as stop:
        noted = []
        threading.Timer(0.05, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
        threading.Timer(0.4, lambda: noted.append(stop.received)).start()
        started = time.monotonic()
        a @ a  # one call into BLAS
        assert time.monotonic() - started > 0.6, "the product was too quick to test this"
        assert noted == [signal.SIGTERM]


def test_a_process_that_cannot_reach_a_safe_point_still_ends_at_the_deadline(tmp_path):
    """Stuck (here: asleep where a collective would block it), a stopped process ends
    ``deadline_s`` after the signal, with one line and the status a stop gives."""
    (tmp_path / "checkpoints" / "latest" / "12").mkdir(parents=True)
    script = ("import os, signal, time\n"
              "from alexnet_jax import run_io\n"
              "with run_io.StopSignals(deadline_s=2, "
              f"checkpoints_dir={str(tmp_path / 'checkpoints')!r}):\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    time.sleep(60)\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": REPO})
    assert time.monotonic() - started < 30
    assert result.returncode == 143
    assert result.stderr.splitlines()[-1] == (
        "error: Stopped by SIGTERM, but this process could not reach a step where every process "
        "saves within 2 s (waiting on another process, in a collective or a checkpoint's "
        "barrier); exiting without a new checkpoint. Restart every process with the same "
        f"command to resume from step 12 (its checkpoint is in {tmp_path}/checkpoints/latest).")


@pytest.mark.long
def test_sigterm_checkpoints_and_resume_is_exact(tmp_path, monkeypatch):
    sig = signal.SIGTERM
    with tfds.testing.mock_data(num_examples=96):
        full = experiment.train_and_evaluate(tiny_config(), str(tmp_path / "full"))
        wrap_train_step(monkeypatch, lambda step: StopAt(4, sig, step))
        with pytest.raises(run_io.TrainingInterrupted, match="Run the same command again"):
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
    assert strip(metrics.read_metrics(str(tmp_path / "full"))) == strip(
        metrics.read_metrics(str(tmp_path / "cut")))


def test_nan_loss_stops_naming_the_first_bad_step_and_keeps_nothing_bad(tmp_path, monkeypatch):
    """The window of 6 logged steps holds the bad one (step 4): the message names step 4,
    found among the window's per-step losses, not the window's last step.  Step 3's
    checkpoint, whose parameters gave that loss, is set aside."""
    def poisoning(original):
        def poisoned(state, batch):
            state, m = original(state, batch)
            if int(state.step) >= 4:
                m = {**m, "loss": m["loss"] * float("nan")}
            return state, m
        return poisoned

    config = tiny_config(every_steps=3)
    config.data.max_train_examples, config.log_every_steps = 192, 6
    wrap_train_step(monkeypatch, poisoning)
    with tfds.testing.mock_data(num_examples=192):
        with pytest.raises(FloatingPointError, match="became nan at step 4; stopping. The "
                           r"checkpoint\(s\) of step\(s\) 3, whose parameters gave that loss, "
                           "were moved to .*diverged. Lower the learning rate"):
            experiment.train_and_evaluate(config, str(tmp_path))
    steps = checkpoints.CheckpointManager(str(tmp_path), config).latest.all_steps()
    assert list(steps) == []
    assert os.listdir(tmp_path / "checkpoints" / "diverged") == ["latest-3"]


def test_mismatched_checkpoint_names_step_and_shapes_and_is_kept(tmp_path):
    with tfds.testing.mock_data(num_examples=96):
        experiment.train_and_evaluate(tiny_config(epochs=1), str(tmp_path))
        other = tiny_config(epochs=2)
        other.model.towers = 1
        with pytest.raises(checkpoints.CheckpointError, match=r"step 3 .*conv1.*shape \(2,"):
            experiment.train_and_evaluate(other, str(tmp_path))
    assert 3 in checkpoints.CheckpointManager(str(tmp_path), tiny_config()).latest.all_steps()


def test_garbage_in_a_checkpoint_is_a_clear_error_and_it_is_kept_aside(tmp_path):
    with tfds.testing.mock_data(num_examples=96):
        experiment.train_and_evaluate(tiny_config(epochs=1, every_steps=0), str(tmp_path))
        step_dir = tmp_path / "checkpoints" / "latest" / "3" / "state"
        for root, _, files in os.walk(step_dir):
            for name in files:
                if not name.startswith("_"):
                    with open(os.path.join(root, name), "wb") as f:
                        f.write(b"garbage")
        with pytest.raises(checkpoints.CheckpointError, match=r"step\(s\) 3 were damaged"):
            experiment.train_and_evaluate(tiny_config(epochs=2, every_steps=0), str(tmp_path))
    assert [name.split("-")[0] for name in os.listdir(tmp_path / "checkpoints" / "damaged")] == \
        ["3"]


def test_half_written_step_is_never_loaded_and_is_removed_at_the_next_start(tmp_path, capsys):
    with tfds.testing.mock_data(num_examples=96):
        experiment.train_and_evaluate(tiny_config(epochs=1), str(tmp_path))
        latest = tmp_path / "checkpoints" / "latest"
        # What a SIGKILL in the middle of orbax's save leaves behind.
        shutil.copytree(latest / "3", latest / "5.orbax-checkpoint-tmp-1234")
        manager = checkpoints.CheckpointManager(str(tmp_path), tiny_config())
        assert manager.latest.latest_step() == 3
        manager.close()
        summary = experiment.train_and_evaluate(tiny_config(epochs=2), str(tmp_path))
    assert summary["steps"] == 6
    assert "Removed 5.orbax-checkpoint-tmp-1234" in capsys.readouterr().out
    assert not any("tmp" in name for name in os.listdir(latest))


def damage(step_dir):
    """Flips a few bits in the middle of the largest data file of a step's arrays, its
    shapes and metadata left as they were."""
    files = [os.path.join(root, name) for root, _, names in os.walk(step_dir / "state")
             for name in names]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.seek(os.path.getsize(largest) // 2)
        chunk = f.read(4)
        f.seek(-len(chunk), os.SEEK_CUR)
        f.write(bytes(b ^ 0x01 for b in chunk))


def test_a_damaged_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(
        tmp_path, capsys):
    """Step 6's bytes changed on disk: the restart names it, moves it aside, resumes from
    step 3 and ends bitwise where an undisturbed run does."""
    with tfds.testing.mock_data(num_examples=96):
        experiment.train_and_evaluate(tiny_config(epochs=3, every_steps=0), str(tmp_path / "full"))
        experiment.train_and_evaluate(tiny_config(epochs=2, every_steps=0), str(tmp_path / "cut"))
        damage(tmp_path / "cut" / "checkpoints" / "latest" / "6")
        capsys.readouterr()
        resumed = experiment.train_and_evaluate(tiny_config(epochs=3, every_steps=0),
                                           str(tmp_path / "cut"))
    out = capsys.readouterr().out
    assert "The checkpoint of step 6" in out and "Resuming from step 3" in out
    assert [name.split("-")[0] for name in
            os.listdir(tmp_path / "cut" / "checkpoints" / "damaged")] == ["6"]
    assert resumed["steps"] == 9
    a, _, history_a = final_params(str(tmp_path / "full"))
    b, _, history_b = final_params(str(tmp_path / "cut"))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert history_a == history_b


def test_checksums_name_the_array_whose_bytes_changed():
    """Silent damage (a flipped bit that the file format does not catch) is found by the
    checksums written with the checkpoint, naming the array."""
    arrays = {"params": {"w": np.arange(12, dtype=np.float32).reshape(3, 4)},
              "step": np.int32(5)}
    written = checkpoints.checksums(arrays)
    flipped = arrays["params"]["w"].copy()
    flipped.view(np.uint32)[1, 2] ^= 1  # one bit of one weight
    swapped = arrays["params"]["w"][::-1].copy()  # the same values in another order
    assert checkpoints.checksums(arrays) == written
    for changed in (flipped, swapped):
        found = checkpoints.checksums({**arrays, "params": {"w": changed}})
        assert [k for k in written if found[k] != written[k]] == ["['params']['w']"]


def test_with_no_intact_checkpoint_left_the_run_stops(tmp_path):
    with tfds.testing.mock_data(num_examples=96):
        experiment.train_and_evaluate(tiny_config(epochs=1, every_steps=0), str(tmp_path))
        damage(tmp_path / "checkpoints" / "latest" / "3")
        with pytest.raises(checkpoints.CheckpointError, match="No intact checkpoint is left"):
            experiment.train_and_evaluate(tiny_config(epochs=2, every_steps=0), str(tmp_path))


def test_full_disk_is_a_clear_error(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", no_space)
    with tfds.testing.mock_data(num_examples=96):
        with pytest.raises(checkpoints.CheckpointError, match=r"The file system of .* is full "
                           r"\(.* free of .*\): a checkpoint needs about .* MB; no checkpoint "
                           r"was complete yet\. Free space there"):
            experiment.train_and_evaluate(tiny_config(), str(tmp_path))


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


def test_restore_from_and_eval_only(tmp_path):
    with tfds.testing.mock_data(num_examples=96):
        first = experiment.train_and_evaluate(tiny_config(epochs=1), str(tmp_path / "a"))
        config = tiny_config(epochs=1)
        config.eval_only = True
        config.restore_from = str(tmp_path / "a")
        result = experiment.train_and_evaluate(config, str(tmp_path / "b"))
    assert result["test_top1_error"] == first["test_top1_error"]
    written = json.load(open(tmp_path / "b" / "eval.json"))
    assert written["test_top1_error"] == first["test_top1_error"]


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


def test_orbax_leftovers_of_a_damaged_read_are_dropped_and_other_records_kept(caplog):
    """The asyncio records a failed read of a damaged checkpoint leaves behind (its sibling
    tasks' and futures' DATA_LOSS, "never retrieved") are dropped: the run's own error
    line stays the last thing printed. Any other asyncio record still shows."""
    import logging
    checkpoints.quiet_orbax_failures()
    log = logging.getLogger("asyncio")
    damaged = ValueError('DATA_LOSS: Error opening "zarr" driver')
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for kind in ("Task", "Future"):
            log.error(f"{kind} exception was never retrieved\nfuture: <Future finished>",
                      exc_info=(ValueError, damaged, None))
        log.error("Future exception was never retrieved",
                  exc_info=(ValueError, ValueError("something else"), None))
    assert [r.exc_info[1].args[0] for r in caplog.records] == ["something else"]
