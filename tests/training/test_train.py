"""The trainer end to end on tiny configs, its step functions, metrics and bad input."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax.model import layouts, networks
from alexnet_jax.training import metrics, optim, train
from support import build, trainer_config  # noqa: E402


def one_batch(batch=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.normal(size=(batch, 28, 28, 1)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 10, batch))}


def test_loss_falls_when_overfitting_one_batch():
    config = trainer_config()
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
    config = trainer_config()
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
    run = build(trainer_config())
    batch = one_batch()
    keys = [jax.random.fold_in(run.state.rng, s) for s in (0, 1)]
    logits = [run.layout.apply({"params": run.state.params}, batch["image"], train=True,
                               rngs={"dropout": k}) for k in keys]
    assert not np.allclose(logits[0], logits[1])




def test_eval_step_counts_only_unmasked_examples():
    run = build(trainer_config())
    batch = {**one_batch(8), "mask": jnp.asarray([1, 1, 1, 0, 0, 0, 0, 0], jnp.float32)}
    sums = run.steps.eval(run.state, batch)
    assert float(sums["count"]) == 3
    logits = run.layout.apply({"params": run.state.params}, batch["image"][:3])
    expected = float(jnp.sum(metrics.topk_correct(logits, batch["label"][:3], 1)))
    assert float(sums["top1_correct"]) == expected


def test_ten_view_evaluation_scores_the_centre_view_and_the_averaged_softmax():
    """Images (batch, 10, H, W, C): top-1 of view 4 (the centre patch) and, as the paper
    did, of the softmax averaged over the 10 views; checked against NumPy."""
    model_config = networks.config_from(trainer_config().model, (28, 28, 1), 10)
    layout = layouts.create("single", model_config)
    tx = optim.create_optimizer(trainer_config(), model_config, 10)
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
    # float32 softmaxes over 10 classes averaged over 10 views, each probability within
    # a few units of 1e-7: measured 2.6e-8 relative of the summed loss (23.3).
    np.testing.assert_allclose(float(sums["10crop_loss"]), expected_loss, rtol=1e-5)


def test_the_moving_average_follows_the_weights_by_its_formula():
    """ema <- 0.9 ema + 0.1 weights after each step, from the initial weights, for the
    parameters and BatchNorm's statistics, against float64 arithmetic on the trajectory
    (each float32 update rounds by half an ulp: 3 steps, a few ulps)."""
    config = trainer_config()
    config.model.norm = "batchnorm"
    config.optim.ema_decay = 0.9
    run = build(config)
    state = run.state
    expected = jax.tree.map(lambda x: np.asarray(x, np.float64),
                            jax.device_get({"params": state.params,
                                            "batch_stats": state.batch_stats}))
    for seed in range(3):
        state, _ = run.steps.train(state, one_batch(seed=seed))
        now = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * np.asarray(p, np.float64),
                                expected, now)
    got = jax.device_get(state.ema)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(g, e, rtol=0, atol=8 * np.spacing(np.float32(np.abs(e).max())))
    evaluated = train.averaged(state)
    assert evaluated.params is state.ema["params"]
