"""The config schema and its validation: every bad value named, with its fix, before any work."""
import json
import os

import pytest

from alexnet_jax.model import components
from alexnet_jax.training import config_base
from alexnet_jax.training.config_base import ConfigError, base_config, validate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fashion_mnist(**changes):
    config = base_config()
    config.model.variant = "small"
    config.batch_size = 64
    for key, value in changes.items():
        target = config
        *parents, leaf = key.split(".")
        for part in parents:
            target = target[part]
        target[leaf] = value
    return config


def test_the_experiments_defaults_are_valid():
    validate(fashion_mnist(), num_devices=1)
    paper = base_config()
    paper.data.dataset = "imagenet2012"
    validate(paper, num_devices=1)


@pytest.mark.parametrize("changes,message", [
    ({"batch_size": 0}, r"config.batch_size=0 must be at least 1"),
    ({"batch_size": -1}, r"config.batch_size=-1 must be at least 1"),
    ({"eval_batch_size": 0}, r"config.eval_batch_size=0 must be at least 1"),
    ({"num_epochs": 0}, r"config.num_epochs=0 must be at least 1"),
    ({"model.norm": "layernorm"}, r"config.model.norm='layernorm' is not one of: "
                                  + ", ".join(components.NORMS)),
    ({"model.variant": "seed"}, r"config.model.variant='seed' is not one of: paper, one_tower, "
                                r"tf_benchmark, small"),
    ({"data.dataset": "mnist"}, r"config.data.dataset='mnist' is not one of"),
    ({"optim.schedule": "exponential"}, r"config.optim.schedule='exponential' is not one of: "
                                        r"plateau"),
    ({"model.dropout_rate": 1.0}, r"config.model.dropout_rate=1.0 must be in \[0, 1\)"),
    ({"optim.learning_rate": 0.0}, r"config.optim.learning_rate=0.0 must be positive"),
    ({"optim.momentum": 1.0}, r"config.optim.momentum=1.0 must be in \[0, 1\)"),
    ({"optim.plateau_factor": 10.0}, r"plateau_factor=10.0 must be in \(0, 1\)"),
    ({"checkpoint.keep": 0}, r"config.checkpoint.keep=0 must be at least 1"),
    ({"data.validation_examples": -5}, r"config.data.validation_examples=-5 must be at least 0"),
    ({"optim.schedule": "cosine", "optim.warmup_epochs": 4.0, "num_epochs": 4},
     r"warmup_epochs=4.0 leaves no epoch of the 4 for the cosine decay"),
    ({"optim.schedule": "linear", "optim.warmup_epochs": 5.0, "num_epochs": 4},
     r"warmup_epochs=5.0 leaves no epoch of the 4 for the linear decay"),
    ({"model.input_shape": (28, 28)}, r"input_shape=\(28, 28\) must be three positive sizes"),
    ({"optim.learning_rate": float("nan")}, r"config.optim.learning_rate=nan must be a finite"),
    ({"optim.learning_rate": float("inf")}, r"config.optim.learning_rate=inf must be a finite"),
    ({"optim.momentum": float("-inf")}, r"config.optim.momentum=-inf must be a finite"),
    ({"data.dataset": "image_folder", "model.variant": "paper"},
     r"image_folder needs config.data.image_folder"),
])
def test_a_bad_value_is_named_with_what_would_work(changes, message):
    with pytest.raises(ConfigError, match=message):
        validate(fashion_mnist(**changes), num_devices=1)


def test_a_variant_too_big_for_the_images_names_its_smallest_input_and_one_that_fits():
    with pytest.raises(ConfigError, match=r"variant=paper needs images of at least 64x64 pixels, "
                                          r"but fashion_mnist gives 28x28: use "
                                          r"config.model.variant=small"):
        validate(fashion_mnist(**{"model.variant": "paper"}), num_devices=1)
    # The network must take the images the data gives: input_shape cannot resize them.
    with pytest.raises(ConfigError, match=r"input_shape=\(64, 64, 1\), but fashion_mnist gives "
                                          r"the network images of \(28, 28, 1\)"):
        validate(fashion_mnist(**{"model.variant": "paper", "model.input_shape": (64, 64, 1)}),
                 num_devices=1)


@pytest.mark.parametrize("changes,devices,processes,message", [
    ({"parallelism": "model"}, 1, 1, r"parallelism=model needs a multiple of 2 devices"),
    ({"parallelism": "model", "model.towers": 1}, 2, 1, r"use parallelism=data"),
    ({"parallelism": "data", "batch_size": 30}, 8, 1,
     r"config.batch_size=30 is not divisible by the 8 data replicas of layout data"),
    ({"parallelism": "data_model", "eval_batch_size": 6}, 8, 1,
     r"config.eval_batch_size=6 is not divisible by the 4 data replicas"),
    ({"num_devices": 4}, 2, 1, r"config.num_devices=4, but only 2 device"),
    ({"parallelism": "data_model", "batch_size": 63}, 4, 2, r"not divisible by the 2"),
    ({"parallelism": "pipeline"}, 2, 1, r"config.parallelism='pipeline' is not one of"),
    # The default layout with two processes would train two models, one on each half batch.
    ({}, 2, 2, r"parallelism=single trains on one device, but this run has 2 processes.*"
               r"Use parallelism=auto"),
    ({"parallelism": "auto", "num_devices": 1}, 2, 2, r"this run has 2 processes"),
])
def test_the_layout_is_checked_against_the_devices(changes, devices, processes, message):
    with pytest.raises(ConfigError, match=message):
        validate(fashion_mnist(**changes), num_devices=devices, process_count=processes)


def test_a_key_added_at_its_default_leaves_a_recorded_runs_identity_as_it_was():
    """A study's run recorded before the optimiser registry, accumulation, the moving
    average and the objective existed keeps the hash the code of its day gave it (at
    907b194), so that the sweep does not take it for stale; such a key set otherwise
    changes the hash."""
    path = os.path.join(REPO, "docs", "studies", "paper_claims", "paper-lr=0.03-seed0",
                        "config.json")
    with open(path) as f:
        record = json.load(f)
    assert "loss" not in record and "optimizer" not in record["optim"]
    assert config_base.config_hash(record) == "d2265bc1d12fcf62"
    for key, value in (("optim.optimizer", "adamw"), ("optim.adam_b1", 0.8),
                       ("optim.accumulate_steps", 2), ("optim.ema_decay", 0.9),
                       ("loss.label_smoothing", 0.1)):
        section, leaf = key.split(".")
        changed = {**record, section: {**record.get(section, {}), leaf: value}}
        assert config_base.config_hash(changed) != "d2265bc1d12fcf62", key
