"""Every experiment file loads into the locked schema and builds its model."""
import glob
import importlib
import os

import pytest

from alexnet_jax import summary
from alexnet_jax.config_base import base_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "experiments", "*.py"))
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
    result = summary.summarize(config)
    assert result["params"] > 0 and result["macs"] > 0


def test_summary_of_the_paper_config_matches_the_paper():
    config = importlib.import_module("experiments.paper_imagenet").get_config()
    result = summary.summarize(config)
    assert result["params"] == 60_965_224
    assert abs(result["macs"] - 724e6) / 724e6 < 0.01
