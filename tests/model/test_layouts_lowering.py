"""The programs a GPU or a TPU runs, exported from this CPU host (``jax.export``).

For the paper's network and the seed's benchmark network in every layout that fits them,
in float32 and bfloat16, the forward pass, the evaluation step and the training step with
the paper's on-device augmentation inside are exported for ``['cuda', 'tpu']``.  They hold
no custom calls (the CPU extra's handlers are CPU-only), grouped convolutions exactly
where towers share a device, and the collectives their layout needs: none on one device;
the gradients' all-reduce over data replicas; the towers' all-gathers (their transposes,
reduce-scatters, in training) and the partial logits' all-reduce where the towers live
on devices of their own.  Needs 8 devices, as ``test_parallel.py``.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax.input_pipeline.preprocess.on_device import PaperAugmentation
from alexnet_jax.model import layers, layouts, networks
from alexnet_jax.tools.timing import paper_sgd  # noqa: E402
from alexnet_jax.training import optim, train

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs 8 devices: run `make test`, or pytest with "
    "XLA_FLAGS=--xla_force_host_platform_device_count=8")

PLATFORMS = ["cuda", "tpu"]
DEVICES = {"single": 1, "data": 8, "model": 2, "data_model": 8}
BATCH = 16  # global: 2 per device under `data`, 4 per replica under `data_model`
COLLECTIVES = ("all_gather", "all_reduce", "reduce_scatter", "all_to_all", "collective_permute")


def abstract_state(layout, config, tx):
    """The training state's shapes, each placed as ``layout`` places it (no memory)."""
    variables = jax.eval_shape(lambda: layouts.initial_variables(config, jax.random.PRNGKey(0)))
    state = train.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32),
                             params=variables["params"],
                             batch_stats=variables.get("batch_stats", {}),
                             opt_state=jax.eval_shape(tx.init, variables["params"]),
                             rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    if layout.mesh is None:
        return state
    return jax.tree.map(
        lambda leaf, spec: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                sharding=NamedSharding(layout.mesh, spec)),
        state, layout.state_specs(state, tx),
        is_leaf=lambda leaf: isinstance(leaf, jax.ShapeDtypeStruct))


def abstract_batch(layout, **shapes):
    sharding = None if layout.mesh is None else NamedSharding(layout.mesh, P("data"))
    return {name: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
            for name, (shape, dtype) in shapes.items()}


def exported_text(function, *args) -> str:
    return jax.export.export(function, platforms=PLATFORMS)(*args).mlir_module()


def collectives(text: str) -> set[str]:
    return {op for op in COLLECTIVES if re.search(rf"\b(stablehlo|mhlo)\.{op}\b", text)}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("variant,kind", [
    ("paper", "single"), ("paper", "data"), ("paper", "model"), ("paper", "data_model"),
    ("tf_benchmark", "single"), ("tf_benchmark", "data")])
def test_the_accelerator_programs_lower_with_their_layouts_collectives(variant, kind, dtype):
    config = networks.model_config(variant, dtype=dtype)
    layout = layouts.create(kind, config, DEVICES[kind], platform="cuda")
    assert layout.model.layers is layers.PLAIN  # no CPU-only form is chosen for a GPU
    dummy = jax.ShapeDtypeStruct((1, *config.input_shape), jnp.float32)
    params = jax.eval_shape(networks.AlexNet(config).init, jax.random.key(0), dummy)["params"]
    tx = optim.optimizer_from_config(paper_sgd(), params, 1, 1)
    augmentation = PaperAugmentation(mean=np.zeros((256, 256, 3), np.float32), seed=0)
    steps = train.make_steps(layout, tx, center_view=4, augmentation=augmentation)
    state = abstract_state(layout, config, tx)
    images = abstract_batch(layout, image=((BATCH, *config.input_shape), jnp.float32))["image"]
    programs = {
        "forward": exported_text(jax.jit(lambda s, x: layout.apply({"params": s.params}, x)),
                                 state, images),
        "eval": exported_text(steps.eval, state, abstract_batch(
            layout, image=((BATCH, 256, 256, 3), jnp.uint8), label=((BATCH,), jnp.int32),
            mask=((BATCH,), jnp.float32))),
        "train": exported_text(steps.train, state, abstract_batch(
            layout, image=((BATCH, 224, 224, 3), jnp.uint8), offset=((BATCH, 2), jnp.int32),
            index=((BATCH,), jnp.int32), label=((BATCH,), jnp.int32)))}
    towers_share_a_device = config.towers > 1 and kind in ("single", "data")
    towers_on_devices = kind in ("model", "data_model")
    for name, text in programs.items():
        assert "custom_call" not in text, name
        groups = set(re.findall(r"feature_group_count = (\d+)", text))
        assert ("2" in groups) == towers_share_a_device, (name, groups)
        computed = "bf16" if dtype == "bfloat16" else "f32"
        convolutions = re.findall(r"stablehlo\.convolution.*", text)
        assert convolutions and all(re.search(rf"-> tensor<[\dx]+x{computed}>", c)
                                    for c in convolutions), name
        expected = set()
        if towers_on_devices:
            expected |= {"all_gather", "all_reduce"} | ({"reduce_scatter"} if name == "train"
                                                        else set())
        if name == "train" and kind != "single":
            expected.add("all_reduce")  # the gradients, summed over the data replicas
        assert collectives(text) == expected, (name, collectives(text))
