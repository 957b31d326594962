"""The command line's messages: out of memory, an unknown key."""

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax.training import command_line
from alexnet_jax.training.config_base import base_config  # noqa: E402
from support import tiny_config  # noqa: E402


def test_out_of_memory_is_one_line_with_the_batch_and_the_fix():
    config = tiny_config()
    error = RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 52052769408 bytes.")
    line = command_line.out_of_memory(error, config)
    assert line.startswith("Out of memory (48.5 GiB at once) on cpu with batch_size=32 and "
                           "eval_batch_size=40: lower them")


def test_an_unknown_key_without_a_near_match_names_its_path_and_its_siblings():
    line = command_line.flag_message(AttributeError("\"'gamma9'\""),
                                     ["main", "--config", "x.py", "--config.optim.gamma9=0.9"])
    siblings = ", ".join(sorted(base_config().optim))
    assert line.startswith("--config.optim.gamma9: the config has no key 'optim.gamma9'; "
                           f"config.optim has: {siblings}")
