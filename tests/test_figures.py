"""Figures: files of the expected size, nearest neighbours against brute force, filter blocks."""
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax import figures  # noqa: E402
from alexnet_jax.model import visualize
from alexnet_jax.training import experiment
from alexnet_jax.training.config_base import base_config  # noqa: E402


def test_nearest_neighbours_match_numpy_brute_force():
    rng = np.random.default_rng(0)
    database = rng.normal(size=(300, 16)).astype(np.float32)
    got = figures.nearest_neighbours(jnp.asarray(database[:5]), jnp.asarray(database), 4)
    for q in range(5):
        d = np.linalg.norm(database - database[q], axis=1)
        d[q] = np.inf
        np.testing.assert_array_equal(got[q], np.argsort(d)[:4])


def test_tower_k_filters_land_in_block_k():
    h, w, n = 3, 3, 4
    ramp = np.arange(h * w, dtype=np.float32).reshape(h, w, 1)
    kernels = np.stack([np.repeat(ramp[..., None], n, -1), np.repeat(-ramp[..., None], n, -1)])
    blocks = visualize.filter_grid(kernels)
    assert len(blocks) == 2
    first = blocks[0][1:1 + h, 1:1 + w, 0]
    second = blocks[1][1:1 + h, 1:1 + w, 0]
    np.testing.assert_allclose(first, ramp[..., 0] / ramp.max())
    np.testing.assert_allclose(second, 1 - ramp[..., 0] / ramp.max())


def test_colour_statistic_separates_colour_agnostic_from_colour_specific_towers():
    rng = np.random.default_rng(1)
    grey = np.repeat(rng.normal(size=(1, 5, 5, 1, 8)), 3, axis=3)
    colour = rng.normal(size=(1, 5, 5, 3, 8))
    stat = visualize.tower_colour_statistic(np.concatenate([grey, colour]))
    assert stat[0] == pytest.approx(0.0, abs=1e-6) and stat[1] > 0.5


def test_figures_from_a_trained_run(tmp_path):
    config = base_config()
    config.model.variant = "small"
    config.data.data_dir = "/nonexistent"
    config.data.max_train_examples = 64
    config.data.max_test_examples = 64
    config.batch_size = 32
    config.eval_batch_size = 32
    config.num_epochs = 2
    config.log_every_steps = 1
    config.progress_bar = False
    with tfds.testing.mock_data(num_examples=64):
        experiment.train_and_evaluate(config, str(tmp_path))
        paths = figures.make_figures(str(tmp_path), examples=64)
    expected = {"conv1_filters": (432, 720), "predictions": (450, 1584),
                "nearest_neighbours": (918, 1008), "curves": (360, 1620)}
    for name, shape in expected.items():
        assert matplotlib.image.imread(paths[name]).shape[:2] == shape, name
