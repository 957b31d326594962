"""Every experiment file loads into the locked schema and builds its model."""
import glob
import importlib
import os

import pytest

from alexnet_jax.tools import layer_table
from alexnet_jax.training.config_base import base_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(os.path.basename(p)[:-3]
                     for p in glob.glob(os.path.join(REPO, "experiments", "*.py"))
                     if not p.endswith("__init__.py"))


def keys(config, prefix=""):
    out = set()
    for key, value in config.items():
        out |= keys(value, f"{prefix}{key}.") if hasattr(value, "items") else {prefix + key}
    return out


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_has_exactly_the_base_keys_and_a_model(name):
    config = importlib.import_module(f"experiments.{name}").get_config()
    assert keys(config) == keys(base_config())
    result = layer_table.summarize(config)
    assert result["params"] > 0 and result["macs"] > 0


def test_summary_of_the_paper_config_matches_the_paper():
    config = importlib.import_module("experiments.paper_imagenet").get_config()
    result = layer_table.summarize(config)
    assert result["params"] == 60_965_224
    assert abs(result["macs"] - 724e6) / 724e6 < 0.01


def test_crossing_bytes_of_the_paper_split_by_hand():
    """Per device per step at batch 128: the other tower's pool2 (13x13x128), pool5
    (6x6x128) and fc6 (2048) in float32, forward and again backward; the output layer's
    all-reduce of 1000 logits only forward; nothing about data replicas in `model`."""
    config = importlib.import_module("experiments.paper_imagenet").get_config()
    config.parallelism = "model"
    rows = {r["crossing"]: r for r in layer_table.summarize(config)["crossings"]}
    conv3 = 13 * 13 * 128 * 4 * 128
    assert rows["conv3"]["forward_bytes"] == rows["conv3"]["backward_bytes"] == conv3
    assert rows["fc6"]["forward_bytes"] == 6 * 6 * 128 * 4 * 128
    assert rows["fc7"]["backward_bytes"] == 2048 * 4 * 128
    assert rows["output"]["forward_bytes"] == 1000 * 4 * 128
    assert rows["output"]["backward_bytes"] == 0
    assert set(rows) == {"conv3", "fc6", "fc7", "output"}
    config.parallelism, config.num_devices, config.model.dtype = "data_model", 8, "bfloat16"
    result = layer_table.summarize(config)
    rows = {r["crossing"]: r for r in result["crossings"]}
    assert result["replica_batch"] == 32
    assert rows["conv3"]["forward_bytes"] == 13 * 13 * 128 * 2 * 32
    # 4 replicas all-reduce each device's half of the 60,965,224 float32 parameters.
    assert rows["gradients"]["backward_bytes"] == int(2 * 3 / 4 * 60_965_224 / 2 * 4)


def test_summary_of_a_batchnorm_model_counts_its_scales_and_offsets():
    config = importlib.import_module("experiments.fashion_mnist").get_config()
    plain = layer_table.summarize(config)["params"]
    config.model.norm = "batchnorm"
    # BatchNorm after conv1 (24 maps) and conv2 (48) in each of 2 towers: a scale and an offset.
    for position in ("after_relu", "before_relu"):
        config.model.norm_position = position
        assert layer_table.summarize(config)["params"] == plain + 2 * 2 * (24 + 48)
