"""Classification metrics against NumPy, and the divergence bound."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax.training import metrics


def test_topk_error_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 200)
    order = np.argsort(-logits, axis=1)
    for k in (1, 3, 5):
        expected = np.array([labels[i] in order[i, :k] for i in range(200)], np.float32)
        np.testing.assert_array_equal(
            metrics.topk_correct(jnp.asarray(logits), jnp.asarray(labels), k), expected)


def test_the_divergence_bound_is_a_hundred_uniform_guesses():
    ok = [{"loss": jax.numpy.float32(2.3)}] * 3
    metrics.check_diverged(ok, 3, 10)
    for value, shown in ((float("nan"), "nan"), (float("inf"), "inf"), (231.0, "231")):
        with pytest.raises(metrics.Diverged, match=f"became {shown} at step 4;"):
            metrics.check_diverged([*ok, {"loss": value}, *ok], 7, 10)
    metrics.check_diverged([{"loss": 230.0}], 1, 10)  # 100 * ln(10) = 230.26
