"""The training loop: a run stopped and resumed ends where one that ran straight through
does, its moving average included; a diverged run stops and sets its unsound checkpoints
aside."""
import os

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax.runtime import checkpoints
from alexnet_jax.training import experiment, metrics
from support import tiny_config  # noqa: E402


def test_a_diverged_run_sets_its_blown_up_checkpoints_aside_and_its_advice_trains(tmp_path):
    """A learning rate of 30 blows the loss up within a few steps, checkpointing every step:
    the checkpoints whose parameters gave the bad loss are moved aside, and the way on
    that the line gives (a new run from the newest kept weights, a lower rate) trains."""
    config = tiny_config(epochs=1, every_steps=1)
    config.optim.learning_rate = 30.0
    workdir = str(tmp_path / "diverged")
    with tfds.testing.mock_data(num_examples=96):
        with pytest.raises(metrics.Diverged) as stopped:
            experiment.train_and_evaluate(config, workdir)
        bad = stopped.value.step
        kept = checkpoints.complete_steps(os.path.join(workdir, "checkpoints", "latest"))
        assert all(step < bad - 1 for step in kept)
        message = str(stopped.value)
        assert f"at step {bad}; stopping." in message and "Lower the learning rate" in message
        retry = tiny_config(epochs=1, every_steps=0)
        retry.optim.learning_rate = 0.01
        if kept:
            assert f"from step {kept[-1]}'s weights: --workdir NEW_DIR --config.restore_from=" \
                   f"{workdir}" in message
            retry.restore_from = workdir
        summary = experiment.train_and_evaluate(retry, str(tmp_path / "retry"))
        assert summary["steps"] == 3 and summary["test_loss"] < 100


def test_a_resumed_run_with_a_moving_average_ends_where_a_straight_run_does(tmp_path):
    """Stopped after its first epoch (its checkpoint) and resumed, bit for bit: the
    weights' and their average's test losses."""
    def config(epochs):
        one = tiny_config(epochs=epochs, every_steps=0)
        one.optim.schedule = "constant"
        one.optim.ema_decay = 0.5
        return one

    with tfds.testing.mock_data(num_examples=96):
        straight = experiment.train_and_evaluate(config(2), str(tmp_path / "straight"))
        experiment.train_and_evaluate(config(1), str(tmp_path / "cut"))
        resumed = experiment.train_and_evaluate(config(2), str(tmp_path / "cut"))
    assert straight["steps"] == resumed["steps"] == 6
    assert straight["test_loss"] == resumed["test_loss"]
    assert straight["ema_test_loss"] == resumed["ema_test_loss"] != straight["test_loss"]
