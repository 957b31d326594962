"""The registries of interchangeable parts: every entry builds, trains and is documented."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import components, config_base, models, summary
from alexnet_jax.models import create_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGISTRIES = {"model.norm": components.NORMS, "model.activation": components.ACTIVATIONS,
              "model.pool": components.POOLS}


@pytest.mark.parametrize("key", list(REGISTRIES))
def test_the_readme_lists_every_choice_of_each_registry(key):
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    line = next((line for line in readme.splitlines() if f"`{key}`" in line), None)
    assert line is not None, f"README.md does not mention `{key}`"
    listed = set(re.findall(r"`([a-z_]+)`", line))
    assert set(REGISTRIES[key]) <= listed, f"README.md's `{key}` line misses " \
        f"{sorted(set(REGISTRIES[key]) - listed)}"


def test_every_normalisation_setting_is_a_config_key_with_its_default():
    model = config_base.base_config().model
    for entry in components.NORMS.values():
        for key, default in entry.options.items():
            assert model[key] == default


@pytest.mark.parametrize("norm", list(components.NORMS))
def test_every_normalisation_trains_a_step_and_keeps_the_maps_shape(norm):
    """Forward in both modes and one gradient: finite, the maps' shapes kept, and the
    normalisation's layers (their parameters in the summary's count) where it has any."""
    model = create_model("small", norm=norm)
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    variables = jax.jit(model.init)(jax.random.key(1), x)

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
        return jnp.mean(logits ** 2)

    grads = jax.grad(loss)(variables["params"])
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    _, state = model.apply(variables, x, mutable=["intermediates"])
    stages = state["intermediates"]["towers"]
    for index in (1, 2):
        assert stages[f"norm{index}_out"][0].shape == stages[f"conv{index}_out"][0].shape
    rows = {r["name"]: r for r in summary.layer_table(model.config)}
    layer = components.NORMS[norm].layer
    owned = sum(np.size(v) for name, tree in variables["params"]["towers"].items()
                if layer and name.startswith(layer) for v in jax.tree.leaves(tree))
    assert rows["norm1"]["params"] + rows["norm2"]["params"] == owned


@pytest.mark.parametrize("name", list(components.ACTIVATIONS))
def test_every_activation_builds_the_network(name):
    model = create_model("small", activation=name)
    x = jnp.ones((2, 28, 28, 1))
    logits = model.apply(jax.jit(model.init)(jax.random.key(0), x), x)
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("name", list(components.POOLS))
def test_every_pooling_gives_the_sizes_pooled_size_predicts(name):
    config = models.model_config("small", pool=name)
    shapes = {r["name"]: r["shape"] for r in summary.layer_table(config)}
    assert shapes["pool5"][0] == config.pooled_size(28)


def test_an_unknown_name_lists_the_registrys_entries():
    with pytest.raises(ValueError, match="valid norms are: " + ", ".join(components.NORMS)):
        components.NORMS["layernorm"]
