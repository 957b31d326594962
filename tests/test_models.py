"""The model family: shapes, sizes, LRN against independent references, the tower split."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from alexnet_jax import ops
from alexnet_jax.models import LocalResponseNorm, create_model


def init_apply(model, x, train=False, rngs=None, mutable=False):
    variables = model.init(jax.random.key(0), x)
    return variables, model.apply(variables, x, train=train, rngs=rngs or {}, mutable=mutable)


def stage_shapes(model, batch=2):
    x = jax.ShapeDtypeStruct((batch, *model.input_shape), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, mutable=["intermediates"]), params, x)
    return {k.removesuffix("_out"): v[0].shape for k, v in state["intermediates"]["towers"].items()}


def param_count(model):
    x = jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)
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
    ("seed", 1, (56, 56, 64), (6, 6, 256), 4096),
    ("small", 2, (28, 28, 24), (2, 2, 48), 256),
])
def test_variant_stage_shapes(variant, towers, conv1, pool5, fc):
    shapes = stage_shapes(create_model(variant))
    assert shapes["conv1"] == (towers, 2, *conv1)
    assert shapes["pool5"] == (towers, 2, *pool5)
    assert shapes["fc6"] == (towers, 2, fc)


def test_seed_variant_has_its_extra_1000_unit_layer():
    shapes = stage_shapes(create_model("seed"))
    assert shapes["fc8"] == (1, 2, 1000)


@pytest.mark.parametrize("variant,expected", [("paper", 60_965_224), ("one_tower", 61_100_840)])
def test_parameter_counts_match_the_literature(variant, expected):
    assert param_count(create_model(variant)) == expected


def test_towers_knob_keeps_per_tower_widths():
    # The paper's one-GPU ablation: one tower of half the kernels.
    one = create_model("paper", towers=1)
    assert stage_shapes(one)["conv1"] == (1, 2, 55, 55, 48)


# --- LRN -------------------------------------------------------------------------------

def lrn_loop(a, k, n, alpha, beta, xp=np):
    """The paper's formula, one channel at a time (float64 with NumPy; traceable with jnp)."""
    if xp is np:
        a = np.asarray(a, np.float64)
    channels = a.shape[-1]
    out = []
    for c in range(channels):
        lo, hi = max(0, c - n // 2), min(channels - 1, c + (n - 1) // 2)
        s = xp.sum(a[..., lo:hi + 1] ** 2, axis=-1)
        out.append(a[..., c] / (k + alpha * s) ** beta)
    return xp.stack(out, axis=-1)


def lrn_numpy(a, k, n, alpha, beta):
    return lrn_loop(a, k, n, alpha, beta, np)


@pytest.mark.parametrize("k,n,alpha,beta", [(2.0, 5, 1e-4, 0.75), (1.0, 9, 1e-3 / 9, 0.75),
                                            (2.0, 4, 1e-2, 0.6)])
def test_lrn_matches_float64_numpy_loop(k, n, alpha, beta):
    a = 10 * jax.random.normal(jax.random.key(1), (2, 5, 5, 13))
    got = LocalResponseNorm(k=k, n=n, alpha=alpha, beta=beta).apply({}, a)
    np.testing.assert_allclose(got, lrn_numpy(a, k, n, alpha, beta), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k,n,alpha,beta", [(2.0, 5, 1e-4, 0.75), (1.0, 9, 1e-3 / 9, 0.75),
                                            (2.0, 7, 1e-3, 0.5)])
def test_lrn_matches_tensorflow_with_converted_settings(k, n, alpha, beta):
    tf = pytest.importorskip("tensorflow")
    a = 10 * np.asarray(jax.random.normal(jax.random.key(2), (2, 6, 6, 16)))
    expected = tf.nn.lrn(a, depth_radius=(n - 1) // 2, bias=k, alpha=alpha, beta=beta).numpy()
    got = LocalResponseNorm(k=k, n=n, alpha=alpha, beta=beta).apply({}, a)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k,n,alpha,beta", [(2.0, 5, 1e-2, 0.75), (1.0, 4, 1e-2, 0.6)])
def test_lrn_gradient_matches_finite_differences(k, n, alpha, beta):
    """Checks the hand-written VJP, with an even window (asymmetric, so mirrored) too."""
    with jax.enable_x64(True):
        a = 10 * jax.random.normal(jax.random.key(3), (1, 3, 3, 8), dtype=jnp.float64)
        lrn = LocalResponseNorm(k=k, n=n, alpha=alpha, beta=beta)
        check_grads(lambda x: lrn.apply({}, x), (a,), order=1, modes=["rev"],
                                  atol=1e-6, rtol=1e-6)


# --- the two towers against a grouped-convolution formulation ---------------------------

def grouped_reference(params, x, model):
    """The same network written without towers: grouped convs, block weights, one LRN per group.

    Independent of Tower/vmap/all_gather: tower-local layers use feature_group_count,
    crossing layers use the towers' kernels concatenated along the output axis.
    """
    towers = model.towers
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
        k, n, alpha, beta = model.lrn
        parts = jnp.split(x, towers, axis=-1)
        return jnp.concatenate([lrn_loop(q, k, n, alpha, beta, jnp) for q in parts], -1)

    def pool(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")

    h = pool(lrn_per_group(conv_layer(x, "conv1", model.conv1_stride, model.conv1_padding, 1)))
    h = pool(lrn_per_group(conv_layer(h, "conv2", 1, "SAME", towers)))
    h = conv_layer(h, "conv3", 1, "SAME", 1)  # the first crossing: reads both towers
    h = conv_layer(h, "conv4", 1, "SAME", towers)
    h = pool(conv_layer(h, "conv5", 1, "SAME", towers))
    h = h.reshape(h.shape[0], -1)
    for name in ("fc6", "fc7"):
        h = jax.nn.relu(jnp.dot(h, cat(p[name]["kernel"]), precision=lax.Precision.HIGHEST)
                        + cat(p[name]["bias"]))
    w_out = cat(p["output"]["kernel"], axis=0)  # rows: tower 0's fc7 units, then tower 1's
    return jnp.dot(h, w_out, precision=lax.Precision.HIGHEST) + params["output_bias"]


@pytest.mark.parametrize("variant,batch,implementation", [
    ("small", 4, "xla"), ("small", 4, "im2col"), ("paper", 1, "im2col")])
def test_two_towers_equal_grouped_convolution_network(variant, batch, implementation):
    model = create_model(variant, implementation=implementation, init="scaled")
    x = jax.random.normal(jax.random.key(4), (batch, *model.input_shape))
    variables = jax.jit(model.init)(jax.random.key(5), x)
    # Non-zero biases so that bias placement is checked too.
    variables = jax.tree.map(lambda v: v + 0.01 * jax.random.normal(jax.random.key(6), v.shape),
                             variables)
    got = jax.jit(model.apply)(variables, x)
    expected = jax.jit(grouped_reference, static_argnums=2)(variables["params"], x, model)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * float(jnp.abs(expected).max()))


def test_two_tower_gradients_equal_grouped_convolution_network():
    # Narrow towers keep the reference's per-channel LRN loop quick to compile.
    model = create_model("small", init="scaled", conv_channels=(4, 6, 8, 8, 6), hidden_units=(16, 16))
    x = jax.random.normal(jax.random.key(4), (4, *model.input_shape))
    params = jax.jit(model.init)(jax.random.key(5), x)["params"]
    assert_gradients_equal_reference(model, params, x)


def assert_gradients_equal_reference(model, params, x):
    got = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, x)))))(params)
    expected = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(grouped_reference(p, x, model)))))(params)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(jnp.abs(b).max()),
                                   err_msg=jax.tree_util.keystr(path))


def test_lone_tower_and_its_gradients_equal_the_reference_network():
    """A one-tower model runs its Tower unmapped (no size-1 vmap): same function, same
    gradients, and the parameter tree keeps its leading tower axis of 1."""
    model = create_model("small", init="scaled", towers=1, conv_channels=(4, 6, 8, 8, 6),
                         hidden_units=(16, 16))
    x = jax.random.normal(jax.random.key(4), (4, *model.input_shape))
    params = jax.jit(model.init)(jax.random.key(5), x)["params"]
    assert params["towers"]["conv1"]["kernel"].shape == (1, 5, 5, 1, 4)
    params = jax.tree.map(lambda v: v + 0.01 * jax.random.normal(jax.random.key(6), v.shape),
                          params)
    np.testing.assert_allclose(jax.jit(model.apply)({"params": params}, x),
                               jax.jit(grouped_reference, static_argnums=2)(params, x, model),
                               rtol=2e-4, atol=1e-5)
    assert_gradients_equal_reference(model, params, x)


def test_cpu_jit_compiles_without_ynnpack_unless_asked(monkeypatch):
    if jax.default_backend() != "cpu":
        pytest.skip("the options apply to the CPU backend only")
    a = jnp.ones((64, 64))
    compiled = lambda: ops.jit(lambda a, b: a @ b).lower(a, a).compile().as_text()  # noqa: E731
    assert "__ynn_fusion" not in compiled()
    monkeypatch.setenv("ALEXNET_JAX_YNNPACK", "1")
    assert "__ynn_fusion" in compiled()


@pytest.mark.parametrize("stride,padding,size", [(1, "SAME", 3), (4, ((0, 3), (0, 3)), 11),
                                                 (2, "VALID", 5)])
def test_im2col_convolution_and_its_gradients_equal_xla(stride, padding, size):
    x = jax.random.normal(jax.random.key(7), (2, 19, 19, 3))
    w = jax.random.normal(jax.random.key(8), (size, size, 3, 4))

    def loss(impl):
        return lambda x, w: jnp.sum(jnp.sin(ops.conv2d(x, w, stride, padding, impl)))

    np.testing.assert_allclose(ops.conv2d(x, w, stride, padding, "im2col"),
                               ops.conv2d(x, w, stride, padding, "xla"), rtol=1e-4, atol=1e-4)
    g_im2col = jax.grad(loss("im2col"), (0, 1))(x, w)
    g_xla = jax.grad(loss("xla"), (0, 1))(x, w)
    for a, b in zip(g_im2col, g_xla):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


# --- behaviour in training and evaluation ------------------------------------------------

def test_dropout_only_when_training_and_keyed():
    model = create_model("small")
    x = jax.random.normal(jax.random.key(9), (4, *model.input_shape))
    variables = model.init(jax.random.key(0), x)
    evals = [model.apply(variables, x) for _ in range(2)]
    np.testing.assert_array_equal(evals[0], evals[1])
    a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    a2 = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(a, a2)
    assert not np.allclose(a, b)
    assert not np.allclose(a, evals[0])


def test_dropout_masks_differ_between_towers():
    model = create_model("small")
    x = jax.random.normal(jax.random.key(9), (4, *model.input_shape))
    variables = model.init(jax.random.key(0), x)
    # Give both towers identical weights: then only the dropout masks can differ.
    same = jax.tree.map(lambda v: jnp.broadcast_to(v[:1], v.shape), variables["params"]["towers"])
    params = {**variables["params"], "towers": same}
    _, state = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(3)},
                           mutable=["intermediates"])
    fc6 = state["intermediates"]["towers"]["fc6_out"][0]  # after dropout
    assert not np.allclose(fc6[0], fc6[1])
    _, state = model.apply({"params": params}, x, train=False, mutable=["intermediates"])
    fc6 = state["intermediates"]["towers"]["fc6_out"][0]
    np.testing.assert_array_equal(fc6[0], fc6[1])


def test_batchnorm_statistics_update_only_when_training():
    model = create_model("small", norm="batchnorm")
    x = jax.random.normal(jax.random.key(10), (8, *model.input_shape))
    variables = model.init(jax.random.key(0), x)
    stats = variables["batch_stats"]
    _, updated = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)},
                             mutable=["batch_stats"])
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, updated["batch_stats"])
    assert all(jax.tree.leaves(changed))
    _, kept = model.apply(variables, x, train=False, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, stats, kept["batch_stats"])
    # Per-tower statistics: a leading tower axis on every statistic.
    assert stats["towers"]["bn1"]["mean"].shape == (2, 24)


def test_bfloat16_computation_close_to_float32():
    x = jax.random.normal(jax.random.key(11), (4, 28, 28, 1))
    f32 = create_model("small", dtype="float32")
    bf16 = create_model("small", dtype="bfloat16")
    variables = f32.init(jax.random.key(0), x)
    a, b = f32.apply(variables, x), bf16.apply(variables, x)
    assert b.dtype == jnp.float32  # logits are returned in float32
    assert jax.tree.leaves(bf16.init(jax.random.key(0), x))[0].dtype == jnp.float32
    np.testing.assert_allclose(b, a, rtol=0.05, atol=0.05 * float(jnp.abs(a).max()))


def test_paper_init_biases_and_weight_scale():
    model = create_model("paper")
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]["towers"]
    for layer in ("conv2", "conv4", "conv5", "fc6", "fc7"):
        np.testing.assert_array_equal(params[layer]["bias"], 1.0)
    for layer in ("conv1", "conv3"):
        np.testing.assert_array_equal(params[layer]["bias"], 0.0)
    assert abs(float(jnp.std(params["fc6"]["kernel"])) - 0.01) < 1e-4
    # The towers are initialised independently.
    assert not np.allclose(params["conv1"]["kernel"][0], params["conv1"]["kernel"][1])


# --- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("knob,value,listed", [
    ("norm", "layernorm", "lrn, batchnorm, none"), ("pool", "avg", "overlapping, non_overlapping"),
    ("activation", "gelu", "relu, tanh"), ("init", "xavier", "paper, scaled"),
    ("implementation", "cudnn", "auto, xla, im2col")])
def test_unknown_choices_list_the_valid_ones(knob, value, listed):
    with pytest.raises(ValueError, match=f"{value}.*{listed}"):
        create_model("small", **{knob: value})


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(ValueError, match="paper, one_tower, seed, small"):
        create_model("vgg")


@pytest.mark.parametrize("shape", [(28, 28, 1), (2, 28, 28, 3), (2, 32, 32, 1)])
def test_wrong_input_shape_says_what_is_expected(shape):
    model = create_model("small")
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(ValueError, match=r"expects images of shape \(batch, 28, 28, 1\)"):
        model.apply(variables, jnp.zeros(shape))


@pytest.mark.parametrize("shape,window,stride", [
    ((2, 13, 13, 5), 3, 2), ((2, 13, 13, 5), 2, 2), ((2, 14, 15, 3), 3, 2),
    ((1, 9, 10, 3), 3, 1), ((1, 14, 15, 3), 5, 3)])
def test_max_pool_forms_and_gradients_agree_on_random_input(shape, window, stride):
    x = jax.random.normal(jax.random.key(12), shape)
    def loss(impl):
        return lambda x: jnp.sum(jnp.sin(ops.max_pool(x, window, stride, impl)))
    np.testing.assert_array_equal(ops.max_pool(x, window, stride, "im2col"),
                                  ops.max_pool(x, window, stride, "xla"))
    np.testing.assert_allclose(jax.grad(loss("im2col"))(x), jax.grad(loss("xla"))(x),
                               rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_goes_where_select_and_scatter_sends_it_at_ties():
    """ReLU maps are full of tied zeros, and rounded inputs of tied values: each window's
    gradient must go to its first maximum in row-major order, as XLA's own does."""
    key_x, key_g = jax.random.split(jax.random.key(3))
    x = jnp.maximum(jnp.round(jax.random.normal(key_x, (2, 15, 15, 4)) * 2) / 2, 0.0)
    g = jax.random.normal(key_g, (2, 7, 7, 4))
    gradients = [jax.vjp(lambda x: ops.max_pool(x, 3, 2, impl), x)[1](g)[0]
                 for impl in ("im2col", "xla")]
    assert float(jnp.mean(x == 0)) > 0.4
    np.testing.assert_allclose(gradients[0], gradients[1], rtol=1e-6, atol=1e-6)


def test_max_pool_of_a_nan_is_nan():
    x = jnp.zeros((1, 5, 5, 2)).at[0, 2, 3, 1].set(jnp.nan)
    y = ops.max_pool(x, 3, 2, "im2col")
    assert np.isnan(y[0, :, 1, 1]).all() and not np.isnan(y[..., 0]).any()


def test_channel_bias_and_its_gradient_equal_a_broadcast_add():
    key_y, key_b, key_g = jax.random.split(jax.random.key(4), 3)
    y = jax.random.normal(key_y, (3, 5, 7, 6))
    bias = jax.random.normal(key_b, (6,))
    g = jax.random.normal(key_g, (3, 5, 7, 6))
    out, vjp = jax.vjp(ops.add_channel_bias, y, bias)
    np.testing.assert_array_equal(out, y + bias)
    dy, dbias = vjp(g)
    np.testing.assert_array_equal(dy, g)
    np.testing.assert_allclose(dbias, np.asarray(g, np.float64).sum((0, 1, 2)), rtol=1e-5)


def test_dense_product_and_its_gradients_equal_plain_autodiff():
    key_x, key_w = jax.random.split(jax.random.key(9))
    x = jax.random.normal(key_x, (3, 7))
    w = jax.random.normal(key_w, (7, 5))
    plain = (((1,), (0,)), ((), ()))

    def loss(dot_general):
        return lambda x, w: jnp.sum(jnp.sin(dot_general(x, w, plain)))

    np.testing.assert_allclose(ops.dense_dot_general(x, w, plain), x @ w, rtol=1e-6)
    for a, b in zip(jax.grad(loss(ops.dense_dot_general), (0, 1))(x, w),
                    jax.grad(loss(jax.lax.dot_general), (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_dense_input_gradient_comes_out_in_the_orientation_eigen_runs_fast():
    """On CPU the input gradient must be computed as kernel @ g^T, (in, batch): XLA folds
    a bare transpose of it back into g @ kernel^T, (batch, in), 6x slower for fc6."""
    if jax.default_backend() != "cpu":
        pytest.skip("the reorientation applies to the CPU backend only")
    x, w = jnp.ones((3, 7)), jnp.ones((7, 5))
    grad = ops.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(
        ops.dense_dot_general(x, w, (((1,), (0,)), ((), ())))))))
    hlo = grad.lower(x, w).compile().as_text()
    dots = [line.split("=")[1] for line in hlo.splitlines() if " dot(" in line]
    # (in, batch) in memory: the shape (7, 3) row-major, or (3, 7) column-major.
    assert any("f32[7,3]{1,0}" in dot or "f32[3,7]{0,1}" in dot for dot in dots), dots
