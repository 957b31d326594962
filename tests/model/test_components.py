"""The registries of interchangeable parts: every entry builds, trains and is documented."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.model import components, networks
from alexnet_jax.model.networks import create_model
from alexnet_jax.tools import layer_table
from alexnet_jax.training import config_base
from support import jitted_apply

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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

    grads = jax.jit(jax.grad(loss))(variables["params"])
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    _, state = jitted_apply(model, mutable=["intermediates"])(variables, x)
    stages = state["intermediates"]["towers"]
    for index in (1, 2):
        assert stages[f"norm{index}_out"][0].shape == stages[f"conv{index}_out"][0].shape
    rows = {r["name"]: r for r in layer_table.layer_table(model.config)}
    layer = components.NORMS[norm].layer
    owned = sum(np.size(v) for name, tree in variables["params"]["towers"].items()
                if layer and name.startswith(layer) for v in jax.tree.leaves(tree))
    assert rows["norm1"]["params"] + rows["norm2"]["params"] == owned


@pytest.mark.parametrize("name", list(components.ACTIVATIONS))
def test_every_activation_builds_the_network(name):
    model = create_model("small", activation=name)
    x = jnp.ones((2, 28, 28, 1))
    logits = jitted_apply(model)(jax.jit(model.init)(jax.random.key(0), x), x)
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("name", list(components.POOLS))
def test_every_pooling_gives_the_sizes_pooled_size_predicts(name):
    config = networks.model_config("small", pool=name)
    shapes = {r["name"]: r["shape"] for r in layer_table.layer_table(config)}
    assert shapes["pool5"][0] == config.pooled_size(28)


def test_an_unknown_name_lists_the_registrys_entries():
    with pytest.raises(ValueError, match="norm='layernorm' is not one of: "
                       + ", ".join(components.NORMS)):
        components.NORMS["layernorm"]


# --- GroupNorm ----------------------------------------------------------------------------

def group_norm_numpy(x, groups, scale, bias, epsilon=1e-5):
    """Wu & He (2018), eq. 1-2, in float64: per example, statistics over each group of
    channels and every position."""
    x = np.asarray(x, np.float64)
    n, h, w, c = x.shape
    grouped = x.reshape(n, h, w, groups, c // groups)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    var = ((grouped - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    normalised = ((grouped - mean) / np.sqrt(var + epsilon)).reshape(n, h, w, c)
    return normalised * scale + bias


@pytest.mark.parametrize("channels,requested,fitted", [
    (24, 32, 24), (48, 32, 24), (128, 32, 32), (192, 32, 32), (10, 4, 2), (7, 32, 7),
    (48, 1, 1)])
def test_group_count_is_the_largest_divisor_of_the_towers_maps_at_most_the_setting(
        channels, requested, fitted):
    site = networks.norm_site(networks.model_config(
        "small", norm="groupnorm", norm_options=(("norm_groups", requested),),
        conv_channels=(channels, 48, 64, 64, 48)), 1)
    assert components.fitted_groups(site) == fitted


def test_the_group_counts_used_are_recorded():
    config = networks.model_config("small", norm="groupnorm")
    assert networks.norm_facts(config) == {"gn1": {"groups": 24, "channels": 24},
                                         "gn2": {"groups": 24, "channels": 48}}
    rows = {r["name"]: r for r in layer_table.layer_table(config)}
    assert rows["norm2"]["facts"] == {"groups": 24, "channels": 48}
    paper = networks.model_config("paper", norm="groupnorm")
    assert [f["groups"] for f in networks.norm_facts(paper).values()] == [24, 32]


@pytest.mark.parametrize("groups", [1, 4, 32])
def test_group_norm_equals_float64_numpy(groups):
    config = networks.model_config("small", norm="groupnorm",
                                 norm_options=(("norm_groups", groups),))
    site = networks.norm_site(config, 2)
    layer = components.NORMS["groupnorm"].build(site, "gn2")
    x = 3.0 * np.asarray(jax.random.normal(jax.random.key(0), (3, 5, 5, 48))) + 1.5
    variables = layer.init(jax.random.key(1), x)
    rng = np.random.default_rng(2)
    scale, bias = rng.normal(size=48).astype(np.float32), rng.normal(size=48).astype(np.float32)
    got = layer.apply({"params": {"scale": scale, "bias": bias}}, x)
    assert set(variables["params"]) == {"scale", "bias"}
    want = group_norm_numpy(x, components.fitted_groups(site), scale, bias)
    # float32 against float64: a group's mean and variance sum 3 x 5 x 5 x 48 / groups
    # values (~1,200 at most: sqrt(K) u ~ 2e-6 of their scale), then one division.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_group_norm_output_of_an_example_does_not_depend_on_its_batch():
    """The whole network in training mode (dropout off): example 0's logits alone, in its
    batch, and in another batch are the same."""
    model = create_model("small", norm="groupnorm", dropout_rate=0.0)
    x = jax.random.normal(jax.random.key(0), (6, 28, 28, 1))
    other = jax.random.normal(jax.random.key(1), (6, 28, 28, 1)).at[0].set(x[0])
    variables = jax.jit(model.init)(jax.random.key(2), x)
    apply = jax.jit(lambda images: model.apply(variables, images, train=True))
    together, alone, elsewhere = apply(x)[0], apply(x[:1])[0], apply(other)[0]
    # The same arithmetic on example 0, but XLA may block a batch of 1 and of 6 into other
    # summation orders (as test_networks' grouped comparison: ~1e-6 of the logits); a
    # statistic shared across the batch moves them by whole percents.
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(elsewhere, together, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("groups", [0, 2.5, True])
def test_a_group_count_that_cannot_work_is_rejected_naming_it(groups):
    with pytest.raises(ValueError, match=r"norm_groups=.* must be a whole number of at least 1"):
        networks.model_config("small", norm="groupnorm", norm_options=(("norm_groups", groups),))
    config = config_base.base_config()
    config.model.variant, config.model.norm, config.model.norm_groups = "small", "groupnorm", 0
    with pytest.raises(config_base.ConfigError, match=r"config.model.norm_groups=0 must be"):
        config_base.validate(config, num_devices=1)
