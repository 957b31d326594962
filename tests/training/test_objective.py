"""The training objective: its terms against float64 references, and one config key that
reaches the training step."""
import jax
import jax.numpy as jnp
import numpy as np

import support
from alexnet_jax.training import metrics
from alexnet_jax.training.objective import LOSS_TERMS, Objective


def smoothed_cross_entropy(logits, labels, weight):
    """-sum_c t_c log p_c with t = (1 - w) one-hot + w / C, in float64."""
    logits = np.asarray(logits, np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    targets = np.full(logits.shape, weight / logits.shape[-1])
    targets[np.arange(len(labels)), labels] += 1.0 - weight
    return -(targets * log_p).sum(-1)


def test_label_smoothing_is_cross_entropy_against_smoothed_targets():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(3.0 * rng.normal(size=(16, 10)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 16))
    got = Objective((("label_smoothing", 0.1),))(logits, labels)
    # float32 log-softmax of logits of size ~10: ~1e-6 of the loss's ~3.
    np.testing.assert_allclose(got, smoothed_cross_entropy(logits, labels, 0.1), rtol=2e-6)


def test_with_no_term_on_the_objective_is_the_cross_entropy_itself():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(8, 10)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 8))
    config = support.tiny_config()
    assert Objective.from_config(config) == Objective()
    np.testing.assert_array_equal(Objective()(logits, labels),
                                  metrics.cross_entropy(logits, labels))
    assert set(config.loss) == set(LOSS_TERMS)


def test_label_smoothing_reaches_the_training_step_from_its_config_key_alone():
    config = support.tiny_config()
    config.model.dropout_rate = 0.0  # train-mode logits equal eval-mode ones (no BatchNorm)
    config.loss.label_smoothing = 0.2
    run = support.build(config)
    rng = np.random.default_rng(2)
    batch = {"image": rng.normal(size=(32, 28, 28, 1)).astype(np.float32),
             "label": rng.integers(0, 10, 32).astype(np.int32)}
    logits = run.layout.apply({"params": run.state.params}, batch["image"], train=False)
    expected = smoothed_cross_entropy(jax.device_get(logits), batch["label"], 0.2).mean()
    _, step_metrics = run.steps.train(run.state, batch)  # donates run.state
    # The same parameters through two programs (the training step's and apply's), whose
    # logits differ by summation order, a few float32 units: measured 1.2e-7 relative of
    # the loss (4.56).  A smoothing of 0.1 instead of 0.2 moves it by 7e-3 relative.
    np.testing.assert_allclose(float(step_metrics["loss"]), expected, rtol=1e-5)
