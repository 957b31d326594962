"""A whole experiment (experiment.train_and_evaluate) under mock and real data."""
import json
import os

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax.runtime import metric_writer
from alexnet_jax.training import experiment
from support import DATA_DIR, HAVE_FASHION_MNIST, trainer_config  # noqa: E402


def test_train_and_evaluate_end_to_end_under_mock_data(tmp_path):
    config = trainer_config()
    with tfds.testing.mock_data(num_examples=128):
        summary = experiment.train_and_evaluate(config, str(tmp_path))
    for key in ("test_top1_error", "test_top5_error", "steps", "wall_s", "best_test_top1_error"):
        assert key in summary
    assert summary["steps"] == 4
    assert summary["test_examples"] == 100
    assert json.load(open(tmp_path / "summary.json")) == summary
    assert json.load(open(tmp_path / "config.json"))["model"]["variant"] == "small"
    records = metric_writer.read_metrics(str(tmp_path))
    train_records = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in train_records] == [2, 4]
    for key in ("epoch", "train_loss", "train_top1_error", "train_top5_error", "learning_rate",
                "images_per_s"):
        assert key in train_records[0]
    assert any("test_top1_error" in r for r in records)
    assert os.listdir(tmp_path / "tensorboard")
    assert os.listdir(tmp_path / "checkpoints" / "latest")


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="Fashion-MNIST absent: run `make data`")
def test_train_and_evaluate_on_a_few_hundred_real_fashion_mnist_examples(tmp_path):
    config = trainer_config(DATA_DIR, train_examples=960, epochs=2, batch=32)
    config.data.max_test_examples = 500
    config.data.random_crop_padding = 0
    config.optim.learning_rate = 0.02
    summary = experiment.train_and_evaluate(config, str(tmp_path))
    assert summary["steps"] == 60 and summary["test_examples"] == 500
    # 10 classes: chance is 90% error. A few hundred examples already do far better.
    assert summary["test_top1_error"] < 0.6


def test_a_moving_average_is_scored_beside_the_weights_and_can_choose_the_best(tmp_path):
    """Each evaluation writes the average's scores (ema_*), summary.json gives them, and
    with best_by=ema the best checkpoint is the epoch whose average scored best."""
    config = trainer_config(epochs=3)
    config.optim.ema_decay = 0.5
    config.checkpoint.best_by = "ema"
    with tfds.testing.mock_data(num_examples=128):
        summary = experiment.train_and_evaluate(config, str(tmp_path))
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    evaluations = [r for r in records if "test_top1_error" in r]
    assert len(evaluations) == 3 and all("ema_test_top1_error" in r for r in evaluations)
    best = min(evaluations, key=lambda r: r["ema_test_top1_error"])
    assert summary["best_epoch"] == best["epoch"]
    assert summary["ema_test_top1_error"] == evaluations[-1]["ema_test_top1_error"]
    assert summary["ema_test_loss"] == evaluations[-1]["ema_test_loss"]
    assert os.listdir(tmp_path / "checkpoints" / "best") == [str(best["step"])]
