"""The layers' forms: each XLA:CPU form against the plain one, the LRN op, and the chooser."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from alexnet_jax import kernels
from alexnet_jax.kernels import plain, xla_cpu

PLAIN_DOT = (((1,), (0,)), ((), ()))


# --- the chooser ------------------------------------------------------------------------

def test_select_gives_plain_layers_off_cpu_and_when_asked():
    assert kernels.select("auto", grouped=True, backend="gpu") is kernels.PLAIN
    assert kernels.select("auto", grouped=False, backend="tpu") is kernels.PLAIN
    assert kernels.select("plain", grouped=True, backend="cpu") is kernels.PLAIN
    assert kernels.PLAIN.conv is nn.Conv and kernels.PLAIN.dense is nn.Dense
    assert kernels.compiler_options("gpu") == {}


@pytest.mark.parametrize("implementation,grouped,im2col,wide_bias", [
    ("auto", True, True, False),    # the towers side by side: im2col, bias added plainly
    ("auto", False, False, True),   # one tower here: XLA's convolution, wide-row bias
    ("im2col", False, True, True),  # forced: im2col whether grouped or not
])
def test_select_on_cpu_picks_the_convolution_by_grouping(implementation, grouped, im2col,
                                                        wide_bias):
    layers = kernels.select(implementation, grouped=grouped, backend="cpu")
    conv = layers.conv(8, (3, 3))
    assert (conv.im2col, conv.wide_bias) == (im2col, wide_bias)
    assert layers.max_pool is xla_cpu.max_pool
    assert layers.dense(4).dot_general is xla_cpu.dense_dot_general


def test_select_rejects_an_unknown_implementation_listing_the_valid_ones():
    with pytest.raises(ValueError, match="cudnn.*auto, plain, im2col"):
        kernels.select("cudnn")


@pytest.mark.parametrize("im2col,wide_bias", [(True, False), (False, True), (True, True)])
def test_cpu_conv_has_nn_conv_parameters_and_values(im2col, wide_bias):
    """Same parameter tree, same initial values, same outputs as ``nn.Conv``: checkpoints
    do not depend on the kernels chosen."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
    args = dict(features=5, kernel_size=(3, 3), strides=(2, 2), padding=((0, 1), (0, 1)),
                bias_init=nn.initializers.normal(1.0))
    ours = xla_cpu.Conv(**args, im2col=im2col, wide_bias=wide_bias)
    reference = nn.Conv(**args)
    variables = ours.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        jnp.shape, reference.init(jax.random.key(1), x))
    jax.tree.map(np.testing.assert_array_equal, variables, reference.init(jax.random.key(1), x))
    np.testing.assert_allclose(ours.apply(variables, x), reference.apply(variables, x),
                               rtol=1e-5, atol=1e-5)


# --- the XLA:CPU forms against the plain ones -------------------------------------------

@pytest.mark.parametrize("stride,padding,size", [(1, "SAME", 3), (4, ((0, 3), (0, 3)), 11),
                                                 (2, "VALID", 5)])
def test_im2col_convolution_and_its_gradients_equal_xla(stride, padding, size):
    x = jax.random.normal(jax.random.key(7), (2, 19, 19, 3))
    w = jax.random.normal(jax.random.key(8), (size, size, 3, 4))

    def loss(use_im2col):
        return lambda x, w: jnp.sum(jnp.sin(xla_cpu.conv2d(x, w, stride, padding, use_im2col)))

    np.testing.assert_allclose(xla_cpu.conv2d(x, w, stride, padding, True),
                               xla_cpu.conv2d(x, w, stride, padding, False), rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.grad(loss(True), (0, 1))(x, w), jax.grad(loss(False), (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


@pytest.mark.parametrize("shape,window,stride", [
    ((2, 13, 13, 5), 3, 2), ((2, 13, 13, 5), 2, 2), ((2, 14, 15, 3), 3, 2),
    ((1, 9, 10, 3), 3, 1), ((1, 14, 15, 3), 5, 3)])
def test_max_pool_forms_and_gradients_agree_on_random_input(shape, window, stride):
    x = jax.random.normal(jax.random.key(12), shape)

    def loss(pool):
        return lambda x: jnp.sum(jnp.sin(pool(x, window, stride)))

    np.testing.assert_array_equal(xla_cpu.max_pool(x, window, stride),
                                  plain.max_pool(x, window, stride))
    np.testing.assert_allclose(jax.grad(loss(xla_cpu.max_pool))(x),
                               jax.grad(loss(plain.max_pool))(x), rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_goes_where_select_and_scatter_sends_it_at_ties():
    """ReLU maps are full of tied zeros, and rounded inputs of tied values: each window's
    gradient must go to its first maximum in row-major order, as XLA's own does."""
    key_x, key_g = jax.random.split(jax.random.key(3))
    x = jnp.maximum(jnp.round(jax.random.normal(key_x, (2, 15, 15, 4)) * 2) / 2, 0.0)
    g = jax.random.normal(key_g, (2, 7, 7, 4))
    gradients = [jax.vjp(lambda x: pool(x, 3, 2), x)[1](g)[0]
                 for pool in (xla_cpu.max_pool, plain.max_pool)]
    assert float(jnp.mean(x == 0)) > 0.4
    np.testing.assert_allclose(gradients[0], gradients[1], rtol=1e-6, atol=1e-6)


def test_max_pool_of_a_nan_is_nan():
    x = jnp.zeros((1, 5, 5, 2)).at[0, 2, 3, 1].set(jnp.nan)
    y = xla_cpu.max_pool(x, 3, 2)
    assert np.isnan(y[0, :, 1, 1]).all() and not np.isnan(y[..., 0]).any()


def test_channel_bias_and_its_gradient_equal_a_broadcast_add():
    key_y, key_b, key_g = jax.random.split(jax.random.key(4), 3)
    y = jax.random.normal(key_y, (3, 5, 7, 6))
    bias = jax.random.normal(key_b, (6,))
    g = jax.random.normal(key_g, (3, 5, 7, 6))
    out, vjp = jax.vjp(xla_cpu.add_channel_bias, y, bias)
    np.testing.assert_array_equal(out, y + bias)
    dy, dbias = vjp(g)
    np.testing.assert_array_equal(dy, g)
    np.testing.assert_allclose(dbias, np.asarray(g, np.float64).sum((0, 1, 2)), rtol=1e-5)


def test_dense_product_and_its_gradients_equal_plain_autodiff():
    key_x, key_w = jax.random.split(jax.random.key(9))
    x = jax.random.normal(key_x, (3, 7))
    w = jax.random.normal(key_w, (7, 5))

    def loss(dot_general):
        return lambda x, w: jnp.sum(jnp.sin(dot_general(x, w, PLAIN_DOT)))

    np.testing.assert_allclose(xla_cpu.dense_dot_general(x, w, PLAIN_DOT), x @ w, rtol=1e-6)
    for a, b in zip(jax.grad(loss(xla_cpu.dense_dot_general), (0, 1))(x, w),
                    jax.grad(loss(jax.lax.dot_general), (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's compiled form")
def test_dense_input_gradient_comes_out_in_the_orientation_eigen_runs_fast():
    """The input gradient must be computed as kernel @ g^T, (in, batch): XLA folds a bare
    transpose of it back into g @ kernel^T, (batch, in), several times slower."""
    x, w = jnp.ones((3, 7)), jnp.ones((7, 5))
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(
        xla_cpu.dense_dot_general(x, w, PLAIN_DOT)))), compiler_options=kernels.compiler_options())
    hlo = grad.lower(x, w).compile().as_text()
    dots = [line.split("=")[1] for line in hlo.splitlines() if " dot(" in line]
    # (in, batch) in memory: the shape (7, 3) row-major, or (3, 7) column-major.
    assert any("f32[7,3]{1,0}" in dot or "f32[3,7]{0,1}" in dot for dot in dots), dots


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's compiler options")
def test_cpu_steps_compile_without_ynnpack_unless_asked(monkeypatch):
    a = jnp.ones((64, 64))

    def compiled():
        options = kernels.compiler_options() or None
        return jax.jit(lambda a, b: a @ b, compiler_options=options).lower(a, a).compile().as_text()

    assert "__ynn_fusion" not in compiled()
    monkeypatch.setenv("ALEXNET_JAX_YNNPACK", "1")
    assert "__ynn_fusion" in compiled()


# --- local response normalisation: one op, one gradient ---------------------------------

def test_lrn_inverse_power_identity_for_the_papers_beta():
    d = jnp.linspace(1.0, 50.0, 101)
    np.testing.assert_allclose(kernels.lrn.inverse_power(d, 0.75),
                               np.asarray(d, np.float64) ** -0.75, rtol=2e-7)


@pytest.mark.parametrize("k,n,alpha,beta", [(2.0, 5, 1e-2, 0.75), (1.0, 4, 1e-2, 0.6)])
def test_lrn_gradient_matches_finite_differences(k, n, alpha, beta):
    """The hand-written VJP, with an even window (asymmetric, so mirrored) too."""
    with jax.enable_x64(True):
        a = 10 * jax.random.normal(jax.random.key(3), (1, 3, 3, 8), dtype=jnp.float64)
        check_grads(lambda x: kernels.local_response_norm(x, k, n, alpha, beta), (a,), order=1,
                    modes=["rev"], atol=1e-6, rtol=1e-6)
