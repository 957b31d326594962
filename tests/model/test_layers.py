"""The layers' forms: each XLA:CPU form against the plain one, the LRN op, and the chooser."""
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from alexnet_jax.model import layers
from alexnet_jax.model.cpu import onednn, xla_cpu
from alexnet_jax.model.layers import plain
from support import lowered_calls, lrn_numpy

PLAIN_DOT = (((1,), (0,)), ((), ()))

# The tolerances below follow from float32's unit roundoff u = 6e-8, by how many terms an
# output sums in another order than its reference (a sum of K terms rounds by ~sqrt(K) u
# of its scale):
# * 1e-6: forms that compute the same few operations per output (pooling picks one value;
#   a dense product of at most 64 terms; LRN's sum of 9 squares and its power);
# * 1e-5, of the output's largest where atol scales with it: a convolution's output sums
#   up to 3x3x384 products (sqrt(K) u ~ 4e-6), or a float64 reference's exact sum;
# * 1e-4: gradients and im2col's regrouped sums, which also run over the batch and every
#   position, ten times the terms or more.
# A wrong form (a kernel transposed, a pad on the wrong side, a tower crossed) is off by
# the output's own size, far above each.


# --- the chooser ------------------------------------------------------------------------

def test_select_gives_plain_layers_off_cpu_and_when_asked():
    assert layers.select("auto", grouped=True, platform="gpu") is layers.PLAIN
    assert layers.select("auto", grouped=False, platform="tpu") is layers.PLAIN
    assert layers.select("plain", grouped=True, platform="cpu") is layers.PLAIN
    assert layers.PLAIN.conv is nn.Conv and layers.PLAIN.dense is nn.Dense
    assert layers.compiler_options("gpu") == {}


@pytest.mark.parametrize("implementation,grouped,on_devices,form,wide_bias,use_onednn", [
    # the towers side by side: one XLA convolution per tower
    ("auto", True, False, "per_tower", False, False),
    ("auto", False, False, "xla", True, True),     # one tower here: oneDNN's, wide-row bias
    ("auto", False, True, "xla", True, False),     # towers on devices: autodiff's gradients
    ("xla", True, False, "per_tower", False, False),  # XLA's own convolutions only
    ("xla", False, False, "xla", True, False),
    ("im2col", False, False, "im2col", True, False),  # forced: im2col whether grouped or not
    ("im2col", True, False, "im2col", False, False),
])
def test_select_on_cpu_picks_the_convolution_by_grouping(implementation, grouped, on_devices,
                                                        form, wide_bias, use_onednn):
    chosen = layers.select(implementation, grouped=grouped, platform="cpu",
                           towers_on_devices=on_devices)
    conv = chosen.conv(8, (3, 3))
    assert (conv.form, conv.wide_bias) == (form, wide_bias)
    assert conv.use_onednn == (use_onednn and onednn.register())  # where built
    assert chosen.lrn is (xla_cpu.onednn_local_response_norm if conv.use_onednn
                          else layers.local_response_norm)
    assert chosen.max_pool is (xla_cpu.onednn_max_pool if conv.use_onednn else xla_cpu.max_pool)
    assert chosen.dense(4).dot_general is (xla_cpu.onednn_dense_dot_general if conv.use_onednn
                                           else xla_cpu.dense_dot_general)


def test_select_rejects_an_unknown_implementation_listing_the_valid_ones():
    with pytest.raises(ValueError, match="cudnn.*auto, plain, xla, im2col"):
        layers.select("cudnn")


@pytest.mark.parametrize("form,wide_bias,use_onednn", [
    ("im2col", False, False), ("xla", True, False), ("im2col", True, False),
    ("per_tower", False, False), ("xla", True, True)])
def test_cpu_conv_has_nn_conv_parameters_and_values(form, wide_bias, use_onednn):
    """Same parameter tree, same initial values, same outputs as ``nn.Conv``: checkpoints
    do not depend on the kernels chosen."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
    args = dict(features=5, kernel_size=(3, 3), strides=(2, 2), padding=((0, 1), (0, 1)),
                bias_init=nn.initializers.normal(1.0))
    ours = xla_cpu.Conv(**args, form=form, wide_bias=wide_bias, use_onednn=use_onednn)
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

    def loss(form):
        return lambda x, w: jnp.sum(jnp.sin(xla_cpu.conv2d(x, w, stride, padding, form)))

    np.testing.assert_allclose(xla_cpu.conv2d(x, w, stride, padding, "im2col"),
                               xla_cpu.conv2d(x, w, stride, padding, "xla"), rtol=1e-4, atol=1e-4)
    # Compiled whole: op by op, the im2col form's gathers are dispatched one at a time.
    gradients = [jax.jit(jax.grad(loss(form), (0, 1)))(x, w) for form in ("im2col", "xla")]
    for a, b in zip(*gradients):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


@pytest.mark.parametrize("in_axes", [(0, 0), (None, 0), (0, None)])
@pytest.mark.parametrize("stride,padding,size", [(1, "SAME", 3), (4, ((0, 3), (0, 3)), 11)])
def test_per_tower_convolution_under_vmap_equals_xlas_grouped_one(in_axes, stride, padding,
                                                                   size):
    """Two towers side by side, each with its own input and kernel, a shared input (conv1)
    or a shared kernel: the values and both gradients of one XLA convolution per tower
    equal those of XLA's own batched (grouped) convolution, the shared argument's
    gradient summed over the towers."""
    towers, key_x, key_w, key_g = 2, *jax.random.split(jax.random.key(9), 3)
    x = jax.random.normal(key_x, (towers, 2, 19, 19, 3) if in_axes[0] == 0 else (2, 19, 19, 3))
    w = jax.random.normal(key_w, (towers, size, size, 3, 4) if in_axes[1] == 0
                          else (size, size, 3, 4))

    def mapped(form):
        return jax.vmap(lambda x, w: xla_cpu.conv2d(x, w, stride, padding, form),
                        in_axes=in_axes, axis_size=towers)

    def backward(form):  # compiled whole, not dispatched op by op
        return jax.jit(lambda x, w, g: jax.vjp(mapped(form), x, w)[1](g))

    ours, reference = jax.jit(mapped("per_tower"))(x, w), jax.jit(mapped("xla"))(x, w)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(key_g, reference.shape)
    for a, b in zip(backward("per_tower")(x, w, g), backward("xla")(x, w, g)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


# --- oneDNN's convolutions against float64 NumPy -----------------------------------------

def numpy_conv_and_gradients(x, w, bias, g, stride, pads):
    """Float64 NumPy: conv(x, w) + bias (NHWC x HWIO, explicit padding) and, for the
    output gradient ``g``, the gradients of x, w and bias, one kernel tap at a time."""
    x, w, bias, g = (np.asarray(a, np.float64) for a in (x, w, bias, g))
    (top, bottom), (left, right) = pads
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    kh, kw = w.shape[:2]
    oh, ow = g.shape[1:3]
    y = np.zeros(g.shape) + bias
    dxp, dw = np.zeros(xp.shape), np.zeros(w.shape)
    for a in range(kh):
        for b in range(kw):
            window = (slice(None), slice(a, a + stride * (oh - 1) + 1, stride),
                      slice(b, b + stride * (ow - 1) + 1, stride))
            y += np.einsum("nhwc,co->nhwo", xp[window], w[a, b])
            dw[a, b] = np.einsum("nhwc,nhwo->co", xp[window], g)
            dxp[window] += np.einsum("nhwo,co->nhwc", g, w[a, b])
    dx = dxp[:, top:top + x.shape[1], left:left + x.shape[2]]
    return y, (dx, dw, g.sum(axis=(0, 1, 2)))


def test_onednn_convolutions_are_built_where_its_wheel_installs():
    """``make`` builds them on x86-64 Linux (requirements.txt's oneDNN wheels)."""
    import platform
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip("the oneDNN wheels are for x86-64 Linux")
    assert onednn.register(), f"{onednn.LIBRARY} missing: run `make kernels`"


@pytest.mark.parametrize("shape,kernel,stride,pads", [
    ((2, 23, 23, 3), (11, 11, 3, 8), 4, ((3, 4), (3, 4))),   # conv1's: 3 channels, stride 4
    ((2, 9, 9, 16), (5, 5, 16, 32), 1, ((2, 2), (2, 2))),     # SAME
    ((3, 7, 7, 32), (3, 3, 32, 20), 1, ((1, 3), (2, 0))),     # lopsided
    ((2, 10, 10, 5), (3, 3, 5, 7), 2, ((0, 0), (0, 0))),      # VALID, strided
])
def test_onednn_convolution_and_its_gradients_equal_float64_numpy(shape, kernel, stride, pads):
    if not onednn.register():
        pytest.skip("oneDNN's convolutions are not built")
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal(shape), rng.standard_normal(kernel) / np.sqrt(np.prod(kernel[:3]))
    bias = rng.standard_normal(kernel[-1:])
    conv = jax.jit(onednn.conv2d_bias(stride, pads))
    y = conv(*(jnp.asarray(a, jnp.float32) for a in (x, w, bias)))
    g = rng.standard_normal(y.shape)
    reference, gradients = numpy_conv_and_gradients(x, w, bias, g, stride, pads)
    np.testing.assert_allclose(y, reference, rtol=1e-5, atol=1e-5)
    x, w, bias, g = (jnp.asarray(a, jnp.float32) for a in (x, w, bias, g))
    _, vjp = jax.vjp(conv, x, w, bias)
    for ours, theirs in zip(vjp(g), gradients):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())
    # x held fixed (an image): the kernel and bias gradients without the input's
    kernel_and_bias = jax.grad(lambda w, b: jnp.sum(conv(x, w, b) * g), (0, 1))(w, bias)
    for ours, theirs in zip(kernel_and_bias, gradients[1:]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())


def numpy_lrn_and_gradient(a, g, k, n, alpha, beta, step=1e-6):
    """LRN by its formula in float64 (``support.lrn_numpy``), and the gradient of
    sum(g * LRN(a)) by central differences, one input at a time."""
    def lrn(a):
        return lrn_numpy(a, k, n, alpha, beta)

    gradient = np.zeros_like(a)
    for index in np.ndindex(*a.shape):
        up, down = a.copy(), a.copy()
        up[index] += step
        down[index] -= step
        # Only the pixel's own channels change.
        pixel = index[:3]
        gradient[index] = np.sum(g[pixel] * (lrn(up[pixel][None, None, None])
                                             - lrn(down[pixel][None, None, None]))) / (2 * step)
    return lrn(a), gradient


@pytest.mark.parametrize("shape,k,n,alpha,beta", [
    ((2, 3, 4, 48), 2.0, 5, 1e-4, 0.75),        # the paper's, one tower's conv1 width
    ((2, 3, 3, 64), 1.0, 9, 1e-3 / 9, 0.75),    # the seed's
    ((1, 2, 3, 16), 0.5, 41, 0.3, 0.6),         # a window wider than the channels
])
@pytest.mark.parametrize("forward", ["onednn", "xla"])  # XLA's where oneDNN has only a loop
def test_onednn_lrn_and_its_gradient_equal_float64_numpy(shape, k, n, alpha, beta, forward):
    if not onednn.register():
        pytest.skip("oneDNN's kernels are not built")
    rng = np.random.default_rng(5)
    a, g = 3 * rng.standard_normal(shape), rng.standard_normal(shape)
    assert onednn.supports_lrn(jnp.zeros(shape, jnp.float32), n)
    reference, gradient = numpy_lrn_and_gradient(a, g, k, n, alpha, beta)
    lrn = jax.jit(onednn.local_response_norm(
        k, n, alpha, beta, None if forward == "onednn" else layers.local_response_norm))
    b, vjp = jax.vjp(lrn, jnp.asarray(a, jnp.float32))
    np.testing.assert_allclose(b, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vjp(jnp.asarray(g, jnp.float32))[0], gradient, rtol=1e-4,
                               atol=1e-5 * np.abs(gradient).max())
    # vmapped (the towers' axis): one call over the leading axes, the same numbers
    stacked = jnp.asarray(np.stack([a, -2 * a]), jnp.float32)
    np.testing.assert_allclose(jax.vmap(lrn)(stacked)[1], lrn(stacked[1]), rtol=1e-6)


@pytest.mark.parametrize("channels,n,taken", [
    (64, 9, True), (192, 5, True), (16, 3, True),
    (24, 9, True),    # oneDNN 3.2's own LRN gradient was wrong here, and
    (64, 1, True),    # crashed here
    (64, 4, False)])  # an even window: oneDNN centres it otherwise
def test_onednn_lrn_takes_odd_windows_in_float32(channels, n, taken):
    """Where the LRN handlers are not used, the layer is ``lrn.local_response_norm``: the
    same value and gradient either way."""
    if not onednn.register():
        pytest.skip("oneDNN's kernels are not built")
    shape, (k, alpha, beta) = (2, 3, 2, channels), (1.0, 0.1, 0.75)
    a = jax.random.normal(jax.random.key(2), shape) * 3
    g = jax.random.normal(jax.random.key(3), shape)
    assert onednn.supports_lrn(a, n) == taken
    assert not onednn.supports_lrn(a.astype(jnp.bfloat16), n)
    ours, vjp = jax.vjp(lambda a: xla_cpu.onednn_local_response_norm(a, k, n, alpha, beta), a)
    theirs, reference_vjp = jax.vjp(lambda a: layers.local_response_norm(a, k, n, alpha, beta), a)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vjp(g)[0], reference_vjp(g)[0], rtol=1e-4, atol=1e-5)


def test_lrn_forward_is_xlas_where_onednn_has_only_its_reference_loop(monkeypatch):
    """oneDNN's LRN forward for channels-last maps is a kernel of its own with AVX-512 and
    its reference loop below (~3x XLA's time): there the layer's forward is XLA's, and the
    gradient stays our handler's."""
    if not onednn.register():
        pytest.skip("oneDNN's kernels are not built")
    assert onednn.lrn_forward_is_jit((32, 56, 56, 64), 9) == avx512_runs_here()  # seed's lrn1
    a = jnp.ones((2, 5, 5, 64))

    def calls():
        return lowered_calls(jax.value_and_grad(lambda a: jnp.sum(
            xla_cpu.onednn_local_response_norm(a, 1.0, 9, 1e-3 / 9, 0.75))), a)

    monkeypatch.setattr(onednn, "lrn_forward_is_jit", lambda shape, n: True)
    assert calls() == {"alexnet_lrn_forward", "alexnet_lrn_backward"}
    monkeypatch.setattr(onednn, "lrn_forward_is_jit", lambda shape, n: False)
    assert calls() == {"alexnet_lrn_backward"}


@pytest.mark.parametrize("batch,inputs,outputs", [(4, 37, 19), (32, 300, 70), (1, 16, 1)])
def test_onednn_matmul_and_its_gradients_equal_float64_numpy(batch, inputs, outputs):
    if not onednn.register():
        pytest.skip("oneDNN's kernels are not built")
    rng = np.random.default_rng(batch)
    x, w, g = (rng.standard_normal(shape) for shape in
               ((batch, inputs), (inputs, outputs), (batch, outputs)))
    as_f32 = [jnp.asarray(a, jnp.float32) for a in (x, w, g)]
    y, vjp = jax.vjp(jax.jit(onednn.matmul), *as_f32[:2])
    dx, dw = vjp(as_f32[2])
    for ours, theirs in ((y, x @ w), (dx, g @ w.T), (dw, x.T @ g)):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())
    # the dense layer's product goes through it, and its vmap (one product per example)
    assert lowered_calls(lambda x, w: xla_cpu.onednn_dense_dot_general(x, w, PLAIN_DOT),
                         *as_f32[:2]) == {"alexnet_matmul"}
    stacked = jnp.stack([as_f32[0], -as_f32[0]])
    np.testing.assert_allclose(jax.vmap(onednn.matmul, (0, None))(stacked, as_f32[1])[1], -y,
                               rtol=1e-6, atol=1e-6)


def test_onednn_dense_product_falls_back_to_xla_outside_float32_matrices():
    if not onednn.register():
        pytest.skip("oneDNN's kernels are not built")
    dot = xla_cpu.onednn_dense_dot_general
    x, w = jnp.ones((2, 3, 4)), jnp.ones((4, 5))
    three_d = (((2,), (0,)), ((), ()))
    assert lowered_calls(lambda x, w: dot(x, w, three_d), x, w) == set()
    np.testing.assert_array_equal(dot(x, w, three_d), x @ w)
    half = jnp.ones((3, 4), jnp.bfloat16)
    assert lowered_calls(lambda x: dot(x, half.T, PLAIN_DOT), half) == set()
    np.testing.assert_array_equal(onednn.matmul(jnp.ones((3, 0)), jnp.ones((0, 4))),
                                  np.zeros((3, 4)))  # an empty sum is zeros, as XLA's


POOL_FORMS = {"xla": xla_cpu.max_pool, "handler": xla_cpu.onednn_max_pool}


@pytest.mark.parametrize("form", POOL_FORMS)
@pytest.mark.parametrize("shape,window,stride", [
    ((2, 13, 13, 5), 3, 2), ((2, 13, 13, 37), 3, 2),  # 37: 16 channels at a time, and the rest
    ((2, 13, 13, 5), 2, 2), ((2, 14, 15, 16), 3, 2), ((1, 9, 10, 3), 3, 1),
    ((1, 14, 15, 3), 5, 3)])
def test_max_pool_forms_and_gradients_agree_on_random_input(form, shape, window, stride):
    x = jax.random.normal(jax.random.key(12), shape)
    pool = POOL_FORMS[form]

    def loss(pool):
        return lambda x: jnp.sum(jnp.sin(pool(x, window, stride)))

    np.testing.assert_array_equal(pool(x, window, stride), plain.max_pool(x, window, stride))
    np.testing.assert_allclose(jax.grad(loss(pool))(x), jax.grad(loss(plain.max_pool))(x),
                               rtol=1e-6, atol=1e-6)


def avx512_runs_here() -> bool:
    """The CPU has AVX-512 and ``ONEDNN_MAX_CPU_ISA`` does not hold it back (``make
    test-isas`` runs these tests as an AVX2 CPU would)."""
    held_back = not onednn.allows_avx512(os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL"))
    with open("/proc/cpuinfo") as f:
        return " avx512f" in f.read() and not held_back


def test_max_pool_handler_is_used_for_float32_maps():
    if not onednn.register():
        pytest.skip("oneDNN's kernels are not built")
    assert onednn.max_pool_vectorized() == avx512_runs_here()
    assert [onednn.allows_avx512(isa) for isa in ("ALL", "avx512_core", "AVX10_1_512", "AVX2",
                                                  "AVX2_VNNI", "AVX", "SSE41")] == \
        [True, True, True, False, False, False, False]
    if not onednn.max_pool_vectorized():
        pytest.skip("the handler's loop is scalar on this CPU: XLA's form is used")
    x = jnp.ones((2, 13, 13, 4))
    for window in (3, 11):  # 11 x 11 taps: the most an int8 counts (XLA's form's limit too)
        calls = lowered_calls(jax.grad(
            lambda x, window=window: jnp.sum(xla_cpu.onednn_max_pool(x, window, 1))), x)
        assert calls == {"alexnet_max_pool", "alexnet_max_pool_backward"}
    assert not onednn.supports_max_pool(x, 12)
    assert lowered_calls(lambda x: xla_cpu.onednn_max_pool(x, 3, 2), x.astype(jnp.bfloat16)) \
        == set()
    # under vmap: one call, the mapped axis as more batch
    maps = jax.random.normal(jax.random.key(5), (3, 2, 13, 13, 20))
    pooled, vjp = jax.vjp(jax.vmap(lambda x: xla_cpu.onednn_max_pool(x, 3, 2)), maps)
    reference, reference_vjp = jax.vjp(lambda x: plain.max_pool(x.reshape(6, 13, 13, 20), 3, 2),
                                       maps)
    np.testing.assert_array_equal(pooled.reshape(reference.shape), reference)
    g = jax.random.normal(jax.random.key(6), reference.shape)
    np.testing.assert_allclose(vjp(g.reshape(pooled.shape))[0], reference_vjp(g)[0],
                               rtol=1e-6, atol=1e-6)


def test_onednn_kernels_older_than_their_source_are_not_used(tmp_path, monkeypatch, caplog):
    if not onednn.LIBRARY.exists():
        pytest.skip("oneDNN's convolutions are not built")
    source = tmp_path / "onednn_kernels.cc"
    source.write_text("// edited after the build")
    later = onednn.LIBRARY.stat().st_mtime + 60
    os.utime(source, (later, later))
    monkeypatch.setattr(onednn, "SOURCE", source)
    assert not onednn.register.__wrapped__()
    assert "older than onednn_kernels.cc" in caplog.text and "make kernels" in caplog.text


def test_a_corrupt_onednn_build_is_reported_and_not_used(tmp_path, monkeypatch, caplog):
    if not onednn._onednn_library().exists():
        pytest.skip("oneDNN's library is not installed")
    library = tmp_path / "_onednn_kernels.so"
    library.write_bytes(b"not a shared library")
    monkeypatch.setattr(onednn, "LIBRARY", library)
    assert not onednn.register.__wrapped__()
    assert "not loaded" in caplog.text and "make kernels" in caplog.text


def test_onednn_build_says_what_is_missing():
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler 'no-such-compiler'"):
        onednn.build(compiler="no-such-compiler")


def test_an_unknown_convolution_form_is_refused_with_the_valid_ones():
    x, w = jnp.zeros((1, 5, 5, 2)), jnp.zeros((3, 3, 2, 4))
    with pytest.raises(ValueError, match="'winograd'.*xla, im2col, per_tower"):
        xla_cpu.conv2d(x, w, 1, "SAME", "winograd")


def test_per_tower_convolution_outside_vmap_is_xlas():
    x = jax.random.normal(jax.random.key(10), (2, 9, 9, 3))
    w = jax.random.normal(jax.random.key(11), (3, 3, 3, 5))

    def loss(form):
        return lambda x, w: jnp.sum(jnp.sin(xla_cpu.conv2d(x, w, 2, "SAME", form)))

    np.testing.assert_array_equal(xla_cpu.conv2d(x, w, 2, "SAME", "per_tower"),
                                  xla_cpu.conv2d(x, w, 2, "SAME", "xla"))
    for a, b in zip(jax.grad(loss("per_tower"), (0, 1))(x, w), jax.grad(loss("xla"), (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("form", POOL_FORMS)
def test_max_pool_gradient_goes_where_select_and_scatter_sends_it_at_ties(form):
    """ReLU maps are full of tied zeros, and rounded inputs of tied values: each window's
    gradient must go to its first maximum in row-major order, as XLA's own does."""
    key_x, key_g = jax.random.split(jax.random.key(3))
    x = jnp.maximum(jnp.round(jax.random.normal(key_x, (2, 15, 15, 20)) * 2) / 2, 0.0)
    g = jax.random.normal(key_g, (2, 7, 7, 20))
    gradients = [jax.vjp(lambda x, pool=pool: pool(x, 3, 2), x)[1](g)[0]
                 for pool in (POOL_FORMS[form], plain.max_pool)]
    assert float(jnp.mean(x == 0)) > 0.4
    np.testing.assert_allclose(gradients[0], gradients[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("form", POOL_FORMS)
def test_max_pool_of_a_nan_is_nan(form):
    """Channel 1 of one window holds a NaN among numbers; channel 17 one among -inf (16
    channels at a time: the handler's second block); channel 0 none."""
    x = jnp.zeros((1, 5, 5, 20)).at[0, 2, 3, 1].set(jnp.nan)
    x = x.at[0, :, :, 17].set(-jnp.inf).at[0, 0, 0, 17].set(jnp.nan)
    y = POOL_FORMS[form](x, 3, 2)
    assert np.isnan(y[0, :, 1, 1]).all() and not np.isnan(y[0, :, 0, 1]).any()
    assert np.isnan(y[0, 0, 0, 17]) and (y[0, 1:, :, 17] == -np.inf).all()
    assert not np.isnan(y[..., 0]).any()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's compiled form")
def test_max_pool_compares_the_taps_once_and_writes_the_winner_out():
    """The forward compares the window's taps with its max in one fusion and writes the
    winning tap out as int8; the gradient reads it.  (An elementwise index would be fused
    into the gradient's fusions and its float compares recomputed there.)"""
    x = jnp.ones((2, 15, 15, 4))
    grad = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(xla_cpu.max_pool(jnp.exp(x), 3, 2)))),
                   compiler_options=layers.compiler_options())
    hlo = grad.lower(x).compile().as_text()
    float_compares = {}  # computation -> compares of float operands
    for computation in hlo.split("\n\n"):
        types = dict(re.findall(r"(%[\w.-]+) = (\w+)\[", computation))
        operands = re.findall(r"compare\((%[\w.-]+),", computation)
        count = sum(types.get(name, "").startswith("f") for name in operands)
        if count:
            float_compares[computation.split(" ", 1)[0]] = count
    assert list(float_compares.values()) == [8], float_compares  # 9 taps: 8 selects
    writes_index = re.findall(r"= s8\[2,7,7,4\]\S* fusion\(.*calls=(%[\w.-]+)", hlo)
    assert writes_index == list(float_compares), (writes_index, float_compares)


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
        xla_cpu.dense_dot_general(x, w, PLAIN_DOT)))), compiler_options=layers.compiler_options())
    hlo = grad.lower(x, w).compile().as_text()
    dots = [line.split("=")[1] for line in hlo.splitlines() if " dot(" in line]
    # (in, batch) in memory: the shape (7, 3) row-major, or (3, 7) column-major.
    assert any("f32[7,3]{1,0}" in dot or "f32[3,7]{0,1}" in dot for dot in dots), dots


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's compiler options")
def test_cpu_steps_compile_without_ynnpack_unless_asked(monkeypatch):
    a = jnp.ones((64, 64))

    def compiled():
        options = layers.compiler_options() or None
        return jax.jit(lambda a, b: a @ b, compiler_options=options).lower(a, a).compile().as_text()

    assert "__ynn_fusion" not in compiled()
    monkeypatch.setenv("ALEXNET_JAX_YNNPACK", "1")
    assert "__ynn_fusion" in compiled()


# --- local response normalisation: one op, one gradient ---------------------------------

def test_lrn_inverse_power_identity_for_the_papers_beta():
    d = jnp.linspace(1.0, 50.0, 101)
    np.testing.assert_allclose(layers.lrn.inverse_power(d, 0.75),
                               np.asarray(d, np.float64) ** -0.75, rtol=2e-7)


@pytest.mark.parametrize("k,n,alpha,beta", [(2.0, 5, 1e-2, 0.75), (1.0, 4, 1e-2, 0.6)])
def test_lrn_gradient_matches_finite_differences(k, n, alpha, beta):
    """The hand-written VJP, with an even window (asymmetric, so mirrored) too."""
    with jax.enable_x64(True):
        a = 10 * jax.random.normal(jax.random.key(3), (1, 3, 3, 8), dtype=jnp.float64)
        check_grads(lambda x: layers.local_response_norm(x, k, n, alpha, beta), (a,), order=1,
                    modes=["rev"], atol=1e-6, rtol=1e-6)
