"""Checkpoints: exact resume, signals, SIGKILL mid-run, corrupt and mismatched checkpoints, NaN."""
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax.runtime import checkpoints
from alexnet_jax.runtime.errors import MismatchError  # noqa: E402
from alexnet_jax.training import experiment
from support import (  # noqa: E402
    final_params,
    tiny_config,
    wrap_train_step,
)


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


def test_restore_from_and_eval_only(tmp_path):
    with tfds.testing.mock_data(num_examples=96):
        first = experiment.train_and_evaluate(tiny_config(epochs=1), str(tmp_path / "a"))
        config = tiny_config(epochs=1)
        config.eval_only = True
        config.restore_from = str(tmp_path / "a")
        result = experiment.train_and_evaluate(config, str(tmp_path / "b"))
        # Resumed with a moving average its checkpoints do not have: the average starts at
        # the resumed weights (nothing is taken for damaged).
        config = tiny_config(epochs=2)
        config.optim.ema_decay = 0.5
        resumed = experiment.train_and_evaluate(config, str(tmp_path / "a"))
    assert result["test_top1_error"] == first["test_top1_error"]
    written = json.load(open(tmp_path / "b" / "eval.json"))
    assert written["test_top1_error"] == first["test_top1_error"]
    assert resumed["epochs"] == 2 and "ema_test_loss" in resumed
    assert not (tmp_path / "a" / "checkpoints" / "damaged").exists()


def test_a_moving_average_starts_at_the_weights_restore_from_takes(tmp_path):
    """Run a keeps an average that differs from its weights; a run that starts from a's
    weights starts its own average at those weights, not at a's average."""
    with tfds.testing.mock_data(num_examples=96):
        config = tiny_config(epochs=1)
        config.optim.ema_decay = 0.5
        first = experiment.train_and_evaluate(config, str(tmp_path / "a"))
        assert first["ema_test_loss"] != first["test_loss"]
        config.eval_only = True
        config.restore_from = str(tmp_path / "a")
        result = experiment.train_and_evaluate(config, str(tmp_path / "b"))
        # Resumed without the average its checkpoints have: it is read and dropped.
        config = tiny_config(epochs=2)
        resumed = experiment.train_and_evaluate(config, str(tmp_path / "a"))
    assert result["test_loss"] == first["test_loss"]
    assert result["ema_test_loss"] == result["test_loss"]
    assert resumed["epochs"] == 2 and "ema_test_loss" not in resumed
    assert not (tmp_path / "a" / "checkpoints" / "damaged").exists()


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


def test_best_without_latest_is_refused_with_the_two_ways_on(tmp_path):
    workdir = str(tmp_path)
    with tfds.testing.mock_data(num_examples=96):
        experiment.train_and_evaluate(tiny_config(epochs=1, every_steps=0), workdir)
        import shutil
        shutil.rmtree(tmp_path / "checkpoints" / "latest")
        with pytest.raises(MismatchError, match=r"latest holds no checkpoint, but .*best holds "
                           r"step 3: .*--config.restore_from=.*best/3; to start over here: "
                           "remove"):
            experiment.train_and_evaluate(tiny_config(epochs=1, every_steps=0), workdir)
