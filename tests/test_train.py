"""The trainer end to end on tiny configs, its step functions, metrics and bad input."""
import functools
import json
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

import support  # noqa: E402
from alexnet_jax import experiment, metrics, models, optim, parallel, run_io, train  # noqa: E402
from support import build  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, "data")
HAVE_FASHION_MNIST = os.path.exists(os.path.join(DATA_DIR, "fashion-mnist",
                                                 "train-images-idx3-ubyte.gz"))


def tiny_config(data_dir="/nonexistent", train_examples=128, epochs=1, batch=32):
    config = support.tiny_config(epochs, 0, data_dir, train_examples, 100, batch)
    config.eval_batch_size = 64
    config.log_every_steps = 2
    config.optim.schedule = "constant"
    config.checkpoint.async_save = True
    config.checkpoint.every_steps = 1000
    return config


def test_train_and_evaluate_end_to_end_under_mock_data(tmp_path):
    config = tiny_config()
    with tfds.testing.mock_data(num_examples=128):
        summary = experiment.train_and_evaluate(config, str(tmp_path))
    for key in ("test_top1_error", "test_top5_error", "steps", "wall_s", "best_test_top1_error"):
        assert key in summary
    assert summary["steps"] == 4
    assert summary["test_examples"] == 100
    assert json.load(open(tmp_path / "summary.json")) == summary
    assert json.load(open(tmp_path / "config.json"))["model"]["variant"] == "small"
    records = metrics.read_metrics(str(tmp_path))
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
    config = tiny_config(DATA_DIR, train_examples=960, epochs=2, batch=32)
    config.data.max_test_examples = 500
    config.data.random_crop_padding = 0
    config.optim.learning_rate = 0.02
    summary = experiment.train_and_evaluate(config, str(tmp_path))
    assert summary["steps"] == 60 and summary["test_examples"] == 500
    # 10 classes: chance is 90% error. A few hundred examples already do far better.
    assert summary["test_top1_error"] < 0.6


def one_batch(batch=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.normal(size=(batch, 28, 28, 1)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 10, batch))}


def test_loss_falls_when_overfitting_one_batch():
    config = tiny_config()
    config.model.dropout_rate = 0.0
    config.optim.learning_rate = 0.01
    run = build(config)
    state, batch = run.state, one_batch()
    losses = []
    for _ in range(60):
        state, m = run.steps.train(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.3 * losses[0]


def params_after_steps(seed, steps=3):
    config = tiny_config()
    config.seed = seed
    run = build(config)
    state = run.state
    for i in range(steps):
        state, _ = run.steps.train(state, one_batch(seed=i))
    return jax.device_get(state.params)


def test_same_seed_same_parameters_other_seed_different():
    a, b, c = params_after_steps(0), params_after_steps(0), params_after_steps(1)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.allclose(a["towers"]["conv1"]["kernel"], c["towers"]["conv1"]["kernel"])


def test_dropout_masks_change_from_step_to_step():
    run = build(tiny_config())
    batch = one_batch()
    keys = [jax.random.fold_in(run.state.rng, s) for s in (0, 1)]
    logits = [run.layout.apply({"params": run.state.params}, batch["image"], train=True,
                               rngs={"dropout": k}) for k in keys]
    assert not np.allclose(logits[0], logits[1])


def test_topk_error_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 200)
    order = np.argsort(-logits, axis=1)
    for k in (1, 3, 5):
        expected = np.array([labels[i] in order[i, :k] for i in range(200)], np.float32)
        np.testing.assert_array_equal(
            metrics.topk_correct(jnp.asarray(logits), jnp.asarray(labels), k), expected)


def test_eval_step_counts_only_unmasked_examples():
    run = build(tiny_config())
    batch = {**one_batch(8), "mask": jnp.asarray([1, 1, 1, 0, 0, 0, 0, 0], jnp.float32)}
    sums = run.steps.eval(run.state, batch)
    assert float(sums["count"]) == 3
    logits = run.layout.apply({"params": run.state.params}, batch["image"][:3])
    expected = float(jnp.sum(metrics.topk_correct(logits, batch["label"][:3], 1)))
    assert float(sums["top1_correct"]) == expected


def test_ten_view_evaluation_scores_the_centre_view_and_the_averaged_softmax():
    """Images (batch, 10, H, W, C): top-1 of view 4 (the centre patch) and, as the paper
    did, of the softmax averaged over the 10 views; checked against NumPy."""
    model_config = models.config_from(tiny_config().model, (28, 28, 1), 10)
    layout = parallel.create("single", model_config)
    tx = optim.create_optimizer(tiny_config(), model_config, 10)
    step = jax.jit(functools.partial(train.eval_step, apply_fn=layout.apply, center_view=4))
    state = train.create_train_state(0, layout, tx)
    rng = np.random.default_rng(3)
    images = jnp.asarray(rng.normal(size=(6, 10, 28, 28, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 6))
    mask = jnp.asarray([1, 1, 1, 1, 1, 0], jnp.float32)
    sums = step(state, {"image": images, "label": labels, "mask": mask})
    logits = np.asarray(layout.apply({"params": state.params}, images.reshape(60, 28, 28, 1)))
    logits = logits.reshape(6, 10, 10).astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    real = np.asarray(mask, bool)
    centre_hits = (logits[:, 4].argmax(-1) == np.asarray(labels))[real].sum()
    averaged = probs.mean(1)
    averaged_hits = (averaged.argmax(-1) == np.asarray(labels))[real].sum()
    assert float(sums["top1_correct"]) == centre_hits
    assert float(sums["10crop_top1_correct"]) == averaged_hits
    expected_loss = -np.log(averaged[np.arange(6), np.asarray(labels)])[real].sum()
    np.testing.assert_allclose(float(sums["10crop_loss"]), expected_loss, rtol=1e-4)


def test_processes_sharing_a_workdir_do_not_trip_over_its_write_check(tmp_path):
    """Every process of a multi-host run checks the shared workdir at once; with one probe
    file name, one process removed the other's probe and died (its peer then waited out
    JAX's 2-minute topology exchange: the two-process test's CI failure)."""
    errors = []

    def check_many_times():
        try:
            for _ in range(300):
                run_io.check_workdir(str(tmp_path / "shared"))
        except OSError as error:
            errors.append(error)

    threads = [threading.Thread(target=check_many_times) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert os.listdir(tmp_path / "shared") == []  # the probes leave nothing behind


def test_unwritable_workdir_is_an_error_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="Cannot write to workdir"):
        run_io.check_workdir(str(blocker / "run"))
