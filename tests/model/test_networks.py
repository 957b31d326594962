"""The model family: shapes, sizes, LRN against independent references, the tower split."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from alexnet_jax.model import components, layers, networks
from alexnet_jax.model.components import LocalResponseNorm
from alexnet_jax.model.cpu import onednn
from alexnet_jax.model.networks import create_model
from support import jitted_apply, lowered_calls, lrn_numpy

IM2COL = layers.select("im2col", grouped=True, platform="cpu")


def init(model, x, key=0):
    """The model's variables, without the placement marks (see layouts.py)."""
    return nn.unbox(jax.jit(model.init)(jax.random.key(key), x))


@jax.jit
def perturbed(tree):
    """``tree`` plus 0.01 N(0, 1) noise, so that zero biases do not hide their placement
    (one program: eagerly, each leaf's shape would compile its own ops)."""
    return jax.tree.map(lambda v: v + 0.01 * jax.random.normal(jax.random.key(6), v.shape), tree)


def stage_shapes(model, batch=2):
    x = jax.ShapeDtypeStruct((batch, *model.config.input_shape), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, mutable=["intermediates"]), params, x)
    return {k.removesuffix("_out"): v[0].shape for k, v in state["intermediates"]["towers"].items()}


def param_count(model):
    x = jax.ShapeDtypeStruct((1, *model.config.input_shape), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def test_paper_stage_shapes_follow_figure_2():
    shapes = stage_shapes(create_model("paper"))
    expected = {"conv1": (55, 55, 48), "pool1": (27, 27, 48), "conv2": (27, 27, 128),
                "pool2": (13, 13, 128), "conv3": (13, 13, 192), "conv4": (13, 13, 192),
                "conv5": (13, 13, 128), "pool5": (6, 6, 128), "fc6": (2048,), "fc7": (2048,)}
    for name, shape in expected.items():
        assert shapes[name] == (2, 2, *shape), name  # (towers, batch, ...)


@pytest.mark.parametrize("variant,towers,conv1,pool5,fc", [
    ("one_tower", 1, (55, 55, 64), (6, 6, 256), 4096),
    ("tf_benchmark", 1, (56, 56, 64), (6, 6, 256), 4096),
    ("small", 2, (28, 28, 24), (2, 2, 48), 256),
])
def test_variant_stage_shapes(variant, towers, conv1, pool5, fc):
    shapes = stage_shapes(create_model(variant))
    assert shapes["conv1"] == (towers, 2, *conv1)
    assert shapes["pool5"] == (towers, 2, *pool5)
    assert shapes["fc6"] == (towers, 2, fc)


def test_tf_benchmark_variant_has_its_extra_1000_unit_layer():
    shapes = stage_shapes(create_model("tf_benchmark"))
    assert shapes["fc8"] == (1, 2, 1000)


@pytest.mark.parametrize("variant,expected", [("paper", 60_965_224), ("one_tower", 61_100_840)])
def test_parameter_counts_match_the_literature(variant, expected):
    assert param_count(create_model(variant)) == expected


def test_towers_knob_keeps_per_tower_widths():
    # The paper's one-GPU ablation: one tower of half the kernels.
    one = create_model("paper", towers=1)
    assert stage_shapes(one)["conv1"] == (1, 2, 55, 55, 48)


# --- LRN -------------------------------------------------------------------------------

@pytest.mark.parametrize("k,n,alpha,beta", [(2.0, 5, 1e-4, 0.75), (1.0, 9, 1e-3 / 9, 0.75),
                                            (2.0, 4, 1e-2, 0.6)])
def test_lrn_matches_float64_numpy_loop(k, n, alpha, beta):
    a = 10 * jax.random.normal(jax.random.key(1), (2, 5, 5, 13))
    got = LocalResponseNorm(k=k, n=n, alpha=alpha, beta=beta).apply({}, a)
    # float32 against float64: a sum of at most 9 squares, a power and a product, each
    # rounding by 6e-8 of its value, ~1e-6 of the output in all; atol for outputs near 0.
    np.testing.assert_allclose(got, lrn_numpy(a, k, n, alpha, beta), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k,n,alpha,beta", [(2.0, 5, 1e-4, 0.75), (1.0, 9, 1e-3 / 9, 0.75),
                                            (2.0, 7, 1e-3, 0.5)])
def test_lrn_matches_tensorflow_with_converted_settings(k, n, alpha, beta):
    tf = pytest.importorskip("tensorflow")
    a = 10 * np.asarray(jax.random.normal(jax.random.key(2), (2, 6, 6, 16)))
    expected = tf.nn.lrn(a, depth_radius=(n - 1) // 2, bias=k, alpha=alpha, beta=beta).numpy()
    got = LocalResponseNorm(k=k, n=n, alpha=alpha, beta=beta).apply({}, a)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)  # both float32: as above


# --- the two towers against a grouped-convolution formulation ---------------------------

def lrn_band(a, k, n, alpha, beta):
    """The paper's formula with each window's sum of squares as a product with a 0/1 band
    matrix (row c: the channels c - n//2 .. c + (n-1)//2): one matmul, quick to compile
    for the paper's 96 and 256 channels, and independent of the layer's shifted slices."""
    c = np.arange(a.shape[-1])
    band = ((c[None, :] >= c[:, None] - n // 2) & (c[None, :] <= c[:, None] + (n - 1) // 2))
    sums = jnp.einsum("...j,cj->...c", a * a, band.astype(a.dtype),
                      precision=lax.Precision.HIGHEST)
    return a / (k + alpha * sums) ** beta


@pytest.mark.parametrize("n", [5, 4])
def test_the_references_band_lrn_is_the_paper_formula(n):
    a = 10 * jax.random.normal(jax.random.key(3), (2, 3, 3, 11))
    np.testing.assert_allclose(lrn_band(a, 2.0, n, 1e-3, 0.75), lrn_numpy(a, 2.0, n, 1e-3, 0.75),
                               rtol=1e-5, atol=1e-6)


def grouped_reference(params, x, model):
    """The same network written without towers: grouped convs, block weights, one LRN per group.

    Independent of Tower/vmap/all_gather: tower-local layers use feature_group_count,
    crossing layers use the towers' kernels concatenated along the output axis.
    """
    config = model.config
    towers = config.towers
    p = params["towers"]

    def cat(w, axis=-1):
        return jnp.concatenate(list(w), axis=axis)

    def conv_layer(x, name, stride, padding, groups):
        w, b = p[name]["kernel"], p[name]["bias"]
        y = lax.conv_general_dilated(x, cat(w), (stride, stride), padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=groups,
                                     precision=lax.Precision.HIGHEST)
        return jax.nn.relu(y + cat(b))

    def lrn_per_group(x):
        k, n, alpha, beta = config.lrn
        parts = jnp.split(x, towers, axis=-1)
        return jnp.concatenate([lrn_band(q, k, n, alpha, beta) for q in parts], -1)

    def pool(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")

    shape = dict(zip([f"conv{i}" for i in range(1, 6)],
                     zip(config.conv_strides, config.conv_paddings)))
    h = pool(lrn_per_group(conv_layer(x, "conv1", *shape["conv1"], 1)))
    h = pool(lrn_per_group(conv_layer(h, "conv2", *shape["conv2"], towers)))
    h = conv_layer(h, "conv3", *shape["conv3"], 1)  # the first crossing: reads both towers
    h = conv_layer(h, "conv4", *shape["conv4"], towers)
    h = pool(conv_layer(h, "conv5", *shape["conv5"], towers))
    h = h.reshape(h.shape[0], -1)
    for name in ("fc6", "fc7"):
        h = jax.nn.relu(jnp.dot(h, cat(p[name]["kernel"]), precision=lax.Precision.HIGHEST)
                        + cat(p[name]["bias"]))
    w_out = cat(p["output"]["kernel"], axis=0)  # rows: tower 0's fc7 units, then tower 1's
    return jnp.dot(h, w_out, precision=lax.Precision.HIGHEST) + params["output_bias"]


@pytest.mark.parametrize("variant,batch,layers", [
    ("small", 4, layers.PLAIN), ("small", 4, IM2COL), ("paper", 1, IM2COL)])
def test_two_towers_equal_grouped_convolution_network(variant, batch, layers):
    model = create_model(variant, layers, init="scaled")
    x = jax.random.normal(jax.random.key(4), (batch, *model.config.input_shape))
    variables = init(model, x, 5)
    variables = perturbed(variables)
    got = jax.jit(model.apply)(variables, x)
    expected = jax.jit(grouped_reference, static_argnums=2)(variables["params"], x, model)
    # Two float32 programs summing the same products in other orders: each of the 8 layers
    # adds up to ~3,500 products (conv4: 3x3x384), whose rounding grows as sqrt(terms) x
    # 6e-8 ~ 4e-6 of the layer's scale, compounded through the network to ~1e-5-1e-4 of
    # the logits' largest; a wrong tower crossing moves them by their own size.
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * float(jnp.abs(expected).max()))


def test_two_tower_gradients_equal_grouped_convolution_network():
    # Narrow towers keep the two programs' gradients quick to compile.
    model = create_model("small", IM2COL, init="scaled", conv_channels=(4, 6, 8, 8, 6),
                         hidden_units=(16, 16))
    x = jax.random.normal(jax.random.key(4), (4, *model.config.input_shape))
    params = init(model, x, 5)["params"]
    assert_gradients_equal_reference(model, params, x)


def assert_gradients_equal_reference(model, params, x):
    got = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, x)))))(params)
    expected = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(grouped_reference(p, x, model)))))(params)
    # A weight's gradient also sums over the batch and every position (4 x 28 x 28 for
    # conv1: ~3,000 more terms in other orders than the forward's), so 10x the forward's
    # bound; a gradient routed to the wrong tower is off by its whole size.
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(jnp.abs(b).max()),
                                   err_msg=jax.tree_util.keystr(path))


def test_lone_tower_and_its_gradients_equal_the_reference_network():
    """A one-tower model runs its Tower unmapped (no size-1 vmap): same function, same
    gradients, and the parameter tree keeps its leading tower axis of 1."""
    # Where oneDNN's kernels are built, every layer runs in onednn.py's handlers.
    model = create_model("small", layers.select("auto", grouped=False), init="scaled", towers=1,
                         conv_channels=(16, 32, 8, 8, 6), hidden_units=(16, 16))
    x = jax.random.normal(jax.random.key(4), (4, *model.config.input_shape))
    params = init(model, x, 5)["params"]
    assert params["towers"]["conv1"]["kernel"].shape == (1, 5, 5, 1, 16)
    params = perturbed(params)
    if onednn.register():
        calls = lowered_calls(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x))), params)
        pooling = {"alexnet_max_pool", "alexnet_max_pool_backward"}
        assert calls == set(onednn.HANDLERS) - (
            set() if onednn.max_pool_vectorized() else pooling), calls
    np.testing.assert_allclose(jax.jit(model.apply)({"params": params}, x),
                               jax.jit(grouped_reference, static_argnums=2)(params, x, model),
                               rtol=2e-4, atol=1e-5)
    assert_gradients_equal_reference(model, params, x)


# --- behaviour in training and evaluation ------------------------------------------------

def test_dropout_only_when_training_and_keyed():
    model = create_model("small")
    x = jax.random.normal(jax.random.key(9), (4, *model.config.input_shape))
    variables = init(model, x)
    evaluate, train = jitted_apply(model), jitted_apply(model, train=True)
    evals = [evaluate(variables, x) for _ in range(2)]
    np.testing.assert_array_equal(evals[0], evals[1])
    a = train(variables, x, rngs={"dropout": jax.random.key(1)})
    a2 = train(variables, x, rngs={"dropout": jax.random.key(1)})
    b = train(variables, x, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(a, a2)
    assert not np.allclose(a, b)
    assert not np.allclose(a, evals[0])


def test_dropout_masks_differ_between_towers():
    model = create_model("small")
    x = jax.random.normal(jax.random.key(9), (4, *model.config.input_shape))
    variables = init(model, x)
    # Give both towers identical weights: then only the dropout masks can differ.
    same = jax.tree.map(lambda v: jnp.broadcast_to(v[:1], v.shape), variables["params"]["towers"])
    params = {**variables["params"], "towers": same}
    _, state = jitted_apply(model, train=True, mutable=["intermediates"])(
        {"params": params}, x, rngs={"dropout": jax.random.key(3)})
    fc6 = state["intermediates"]["towers"]["fc6_out"][0]  # after dropout
    assert not np.allclose(fc6[0], fc6[1])
    _, state = jitted_apply(model, train=False, mutable=["intermediates"])({"params": params}, x)
    fc6 = state["intermediates"]["towers"]["fc6_out"][0]
    np.testing.assert_array_equal(fc6[0], fc6[1])


def test_batchnorm_statistics_update_only_when_training():
    model = create_model("small", norm="batchnorm")
    x = jax.random.normal(jax.random.key(10), (8, *model.config.input_shape))
    variables = init(model, x)
    stats = variables["batch_stats"]
    _, updated = jitted_apply(model, train=True, mutable=["batch_stats"])(
        variables, x, rngs={"dropout": jax.random.key(1)})
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, updated["batch_stats"])
    assert all(jax.tree.leaves(changed))
    _, kept = jitted_apply(model, train=False, mutable=["batch_stats"])(variables, x)
    jax.tree.map(np.testing.assert_array_equal, stats, kept["batch_stats"])
    # Per-tower statistics: a leading tower axis on every statistic.
    assert stats["towers"]["bn1"]["mean"].shape == (2, 24)


def test_bfloat16_computation_close_to_float32():
    x = jax.random.normal(jax.random.key(11), (4, 28, 28, 1))
    f32 = create_model("small", dtype="float32")
    bf16 = create_model("small", dtype="bfloat16")
    variables = init(f32, x)
    a, b = f32.apply(variables, x), bf16.apply(variables, x)
    assert b.dtype == jnp.float32  # logits are returned in float32
    assert jax.tree.leaves(bf16.init(jax.random.key(0), x))[0].dtype == jnp.float32
    # bfloat16 keeps 8 bits of mantissa: each layer's inputs and weights round by up to
    # 2^-9 (0.2%), and 8 layers compound that to a few percent of the logits' scale.
    np.testing.assert_allclose(b, a, rtol=0.05, atol=0.05 * float(jnp.abs(a).max()))


def test_paper_init_biases_and_weight_scale():
    model = create_model("paper")
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    params = init(model, x)["params"]["towers"]
    for layer in ("conv2", "conv4", "conv5", "fc6", "fc7"):
        np.testing.assert_array_equal(params[layer]["bias"], 1.0)
    for layer in ("conv1", "conv3"):
        np.testing.assert_array_equal(params[layer]["bias"], 0.0)
    assert abs(float(jnp.std(params["fc6"]["kernel"])) - 0.01) < 1e-4
    # The towers are initialised independently.
    assert not np.allclose(params["conv1"]["kernel"][0], params["conv1"]["kernel"][1])


# --- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("knob,value,listed", [
    ("norm", "layernorm", ", ".join(components.NORMS)),
    ("pool", "avg", ", ".join(components.POOLS)),
    ("activation", "gelu", ", ".join(components.ACTIVATIONS)), ("init", "xavier", "paper, scaled"),
    ("dtype", "float16", "float32, bfloat16")])
def test_unknown_choices_list_the_valid_ones(knob, value, listed):
    with pytest.raises(ValueError, match=f"{value}.*{listed}"):
        create_model("small", **{knob: value})


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(ValueError, match="paper, one_tower, tf_benchmark, small"):
        create_model("vgg")


@pytest.mark.parametrize("shape", [(28, 28, 1), (2, 28, 28, 3), (2, 32, 32, 1)])
def test_wrong_input_shape_says_what_is_expected(shape):
    model = create_model("small")
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(ValueError, match=r"expects images of shape \(batch, 28, 28, 1\)"):
        model.apply(variables, jnp.zeros(shape))


@pytest.mark.parametrize("variant,smallest", [("small", 15), ("paper", 64), ("tf_benchmark", 57)])
def test_smallest_input_is_where_pool5_becomes_empty(variant, smallest):
    """Checked against the network itself: at the smallest size pool5 is 1x1, one pixel
    less and it is empty."""
    config = networks.model_config(variant)
    assert config.smallest_input() == smallest
    for size, pooled in ((smallest, 1), (smallest - 1, 0)):
        model = create_model(variant, init="paper",
                             input_shape=(size, size, config.input_shape[-1]))
        assert stage_shapes(model)["pool5"][2:4] == (pooled, pooled)
        assert config.pooled_size(size) == pooled


@pytest.mark.parametrize("norm", list(components.NORMS))
def test_every_variable_a_tower_holds_is_marked_where_its_tower_axis_is_created(norm):
    """Every variable of every layer gets the tower axis's mark, the normalisation's too:
    in the collections its entry names, under its layer name."""
    entry = components.NORMS[norm]

    def leaves(tree):
        return jax.tree.leaves(tree, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))

    for towers in (1, 2):
        model = create_model("small", norm=norm, towers=towers)
        x = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
        specs = nn.get_partition_spec(jax.eval_shape(model.init, jax.random.key(0), x))
        assert set(specs) == {"params", *entry.collections}
        norm_layers = {f"{entry.layer}1", f"{entry.layer}2"}
        for collection in specs:
            tower = specs[collection]["towers"]
            assert norm_layers <= set(tower) or collection not in entry.collections
            assert all(s[0] == networks.TOWER_AXIS and set(s[1:]) <= {None} for s in leaves(tower))
        network = {k: v for k, v in specs["params"]["towers"].items() if k not in norm_layers}
        assert len(leaves(network)) == 15  # conv1-5, fc6, fc7: kernel, bias; output: kernel
        assert specs["params"]["output_bias"] == jax.sharding.PartitionSpec()


def test_a_zfnet_like_network_is_one_row():
    """Every stride, kernel and width is a field of the row: ZFNet's first layers (Zeiler
    and Fergus 2014: 7x7 stride 2, then 5x5 stride 2) are one dict, and the maps come out
    of the sizes that arithmetic gives."""
    row = dict(networks.VARIANTS["one_tower"], conv_kernels=(7, 5, 3, 3, 3),
               conv_strides=(2, 2, 1, 1, 1), conv_paddings=(((1, 1), (1, 1)), *["SAME"] * 4),
               conv_channels=(96, 256, 384, 384, 256), num_classes=10)
    config = networks.ModelConfig(**row)
    # 224 -> conv1 (224 + 2 - 7) // 2 + 1 = 110 -> pool 54 -> conv2 27 -> pool 13 -> pool5 6
    assert config.pooled_size(224) == 6
    variables = jax.eval_shape(networks.AlexNet(config).init, jax.random.key(0),
                               jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    fc6 = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
           if "fc6" in jax.tree_util.keystr(path) and "kernel" in jax.tree_util.keystr(path)]
    assert [kernel.shape[-2] for kernel in fc6] == [6 * 6 * 256]
    with pytest.raises(ValueError, match="one value per convolution layer"):
        networks.ModelConfig(**dict(row, conv_strides=(2, 2)))
