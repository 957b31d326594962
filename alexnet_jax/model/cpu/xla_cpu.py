"""Forms of the network's layers that XLA:CPU runs fast: the same mathematics, other code.

``chooser.py`` says which run when; ``docs/performance.md`` has what each one saves,
measured.  Each is tested against the plain form it replaces.

* ``Conv`` with ``form="per_tower"`` (``per_tower_conv2d``), for the towers side by side:
  what ``vmap`` over the towers makes of a convolution is a grouped convolution, whose
  gradient XLA:CPU runs several times slower than its ungrouped one (Eigen's kernels:
  ``compiler_options``).  This form's ``vmap`` rule runs one ungrouped convolution per
  tower, and its VJP the ungrouped gradients per tower; an input the towers share
  (conv1's image) is convolved once, with the towers' kernels side by side.
* ``Conv`` with ``form="im2col"``: a convolution as patches times a matrix, grouped or
  not: one arithmetic for every layout (``model.implementation=im2col``).
* ``Conv`` with ``wide_bias`` (``add_channel_bias``): the bias added over rows of W x C
  values, so that autodiff sums its gradient over wide rows; XLA:CPU's own sum over N, H
  and W of rows of only C values is slow.  Under the towers' vmap it is slower, so the
  grouped form adds the bias plainly.
* ``max_pool``: the forward keeps each window's winning tap as an int8, and the
  gradient writes the input once, stride phase by stride phase, in place of XLA's
  select-and-scatter.  At ties it sends the gradient where select-and-scatter does: to
  the first maximum in row-major order.  The pooled map itself is XLA's
  ``reduce_window``, and the winning tap one pass of selects over the taps ending in a
  reduction: XLA writes both out once, where elementwise results would be recomputed,
  with the layers below them, inside every fusion that reads them.
* ``dense_dot_general`` (``nn.Dense(dot_general=...)``): the input gradient of a dense
  layer as kernel @ g^T, (in, batch), an orientation Eigen's matrix product runs much
  faster than autodiff's g @ kernel^T, (batch, in).
* ``Conv`` with ``use_onednn``, ``onednn_dense_dot_general``, ``onednn_max_pool`` and
  ``onednn_local_response_norm``: the same layers by ``onednn.py``'s handlers, where
  they take the operands, XLA's forms above elsewhere.
* ``compiler_options``: XLA:CPU hands dots and convolutions to YNNPACK by default;
  Eigen's kernels are faster for this network.  ``ALEXNET_JAX_YNNPACK=1`` keeps
  YNNPACK, whose sums do not depend on how a batch is split over devices (the layout
  tests use it).

Custom VJPs only where JAX still sums a replicated parameter's gradient over data
replicas: max-pooling has no parameters, and the per-tower convolution runs only with
the towers side by side, on one device or under the ``data`` layout, whose ``shard_map``
sums the replicas' gradients at its boundary (``tests/model/test_layouts.py`` checks it).
Where towers live on devices (varying-axes checks on) the ungrouped convolutions are
plain autodiff: a custom VJP there lost that sum.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from alexnet_jax.model.cpu import onednn
from alexnet_jax.model.layers.lrn import local_response_norm

Padding = str | Sequence[tuple[int, int]]


def compiler_options() -> dict[str, str]:
    """YNNPACK off (Eigen's kernels), unless ``ALEXNET_JAX_YNNPACK=1``."""
    if os.environ.get("ALEXNET_JAX_YNNPACK") == "1":
        return {}
    return {"xla_cpu_experimental_ynn_fusion_type": ""}


def explicit_padding(spatial: Sequence[int], kernel: int, stride: int,
                     padding: Padding) -> tuple[tuple[int, int], ...]:
    """'SAME' / 'VALID' or explicit pairs, as explicit (low, high) pairs per spatial axis."""
    if isinstance(padding, str):
        return tuple(jax.lax.padtype_to_pads(spatial, (kernel, kernel), (stride, stride), padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def im2col(x: jax.Array, kernel: int, stride: int, pads: Sequence[tuple[int, int]]) -> jax.Array:
    """Patches of an NHWC batch, (N, H', W', kernel*kernel*C) in (kh, kw, c) order."""
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    out_h = (x.shape[1] - kernel) // stride + 1
    out_w = (x.shape[2] - kernel) // stride + 1
    columns = [x[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride, :]
               for i in range(kernel) for j in range(kernel)]
    return jnp.concatenate(columns, axis=-1)


CONV_FORMS = ("xla", "im2col", "per_tower")


def xla_conv2d(x: jax.Array, kernel: jax.Array, stride: int,
               pads: Sequence[tuple[int, int]]) -> jax.Array:
    """XLA's NHWC x HWIO convolution with explicit (low, high) padding pairs."""
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
           form: str = "xla") -> jax.Array:
    """NHWC x HWIO convolution (cross-correlation): by XLA, as patches times a matrix, or,
    under the towers' vmap, by XLA once per tower (``per_tower_conv2d``)."""
    size = kernel.shape[0]
    pads = explicit_padding(x.shape[1:3], size, stride, padding)
    if form == "xla":
        return xla_conv2d(x, kernel, stride, pads)
    if form == "per_tower":
        return per_tower_conv2d(stride, pads)(x, kernel)
    if form != "im2col":
        raise ValueError(f"Unknown convolution form {form!r}; valid ones are: "
                         f"{', '.join(CONV_FORMS)}.")
    patches = im2col(x, size, stride, pads)
    return jnp.einsum("nhwk,ko->nhwo", patches, kernel.reshape(-1, kernel.shape[-1]))


def _stacked(value: jax.Array, batched: bool, size: int) -> jax.Array:
    return value if batched else jnp.broadcast_to(value, (size, *value.shape))


def _kernels_side_by_side(kernel: jax.Array) -> jax.Array:
    """(towers, kh, kw, in, out) kernels as one (kh, kw, in, towers * out) kernel."""
    towers, kh, kw, channels, out = kernel.shape
    return kernel.transpose(1, 2, 3, 0, 4).reshape(kh, kw, channels, towers * out)


@functools.cache
def per_tower_conv2d(stride: int, pads: tuple[tuple[int, int], ...]) -> Callable:
    """``(x, kernel) -> y``: XLA's convolution, whose ``vmap`` (the towers side by side) is
    one ungrouped convolution per tower instead of XLA's grouped one, forward and gradient.

    Its value and gradients are XLA's for each tower.  An input the towers share (the
    image, for conv1) is convolved once with the towers' kernels side by side (one
    convolution with every tower's output maps, then split per tower): a convolution of
    few input channels is cheaper once wide than once per tower.  Its gradient is summed
    over the towers."""

    def conv(x, kernel):
        return xla_conv2d(x, kernel, stride, pads)

    def shared_input_conv(x, kernel):
        y = conv(x, _kernels_side_by_side(kernel))
        return y.reshape(*y.shape[:-1], kernel.shape[0], -1).transpose(3, 0, 1, 2, 4)

    @jax.custom_batching.custom_vmap
    def forward(x, kernel):
        return conv(x, kernel)

    @forward.def_vmap
    def _forward_per_tower(towers, batched, x, kernel):
        if not batched[0]:
            return shared_input_conv(x, _stacked(kernel, batched[1], towers)), True
        x, kernel = (_stacked(a, b, towers) for a, b in zip((x, kernel), batched))
        return jnp.stack([conv(x[t], kernel[t]) for t in range(towers)]), True

    @jax.custom_batching.custom_vmap
    def gradients(x, kernel, g):
        return jax.vjp(conv, x, kernel)[1](g)

    @gradients.def_vmap
    def _gradients_per_tower(towers, batched, x, kernel, g):
        if not batched[0]:
            kernel, g = (_stacked(a, b, towers) for a, b in zip((kernel, g), batched[1:]))
            return jax.vjp(shared_input_conv, x, kernel)[1](g), (False, True)
        x, kernel, g = (_stacked(a, b, towers) for a, b in zip((x, kernel, g), batched))
        per_tower = [jax.vjp(conv, x[t], kernel[t])[1](g[t]) for t in range(towers)]
        return tuple(jnp.stack(parts) for parts in zip(*per_tower)), (True, True)

    @jax.custom_vjp
    def per_tower(x, kernel):
        return forward(x, kernel)

    per_tower.defvjp(lambda x, kernel: (forward(x, kernel), (x, kernel)),
                     lambda residuals, g: gradients(*residuals, g))
    return per_tower


def add_channel_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """``y + bias`` over the last axis of an NHWC map, as rows of W*C values plus the bias
    tiled W times, so that autodiff sums the bias gradient over N*H wide rows, then W."""
    n, h, w, c = y.shape
    return (y.reshape(n * h, w * c) + jnp.tile(bias, w)).reshape(y.shape)


class Conv(nn.Module):
    """A square 2-D convolution with bias, taking ``nn.Conv``'s arguments and creating its
    parameters (``kernel`` (kh, kw, in, out) and ``bias``, float32); computed in ``dtype``."""

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Padding = "SAME"
    dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    form: str = "xla"
    wide_bias: bool = True
    use_onednn: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        size, stride = self.kernel_size[0], self.strides[0]
        shape = (size, size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        if self.form == "xla" and self.use_onednn and onednn.supports(x, kernel):
            pads = explicit_padding(x.shape[1:3], size, stride, self.padding)
            return onednn.conv2d_bias(stride, pads)(x, kernel, bias)  # the bias added inside
        y = conv2d(x, kernel, stride, self.padding, self.form)
        return add_channel_bias(y, bias) if self.wide_bias else y + bias


def onednn_local_response_norm(a: jax.Array, k: float, n: int, alpha: float,
                               beta: float) -> jax.Array:
    """``lrn.local_response_norm`` by ``onednn.py``'s handlers where they take ``a`` and
    ``n`` (the forward by XLA where oneDNN has only its reference loop for it), else by
    XLA."""
    if onednn.supports_lrn(a, n):
        forward = None if onednn.lrn_forward_is_jit(a.shape, n) else local_response_norm
        return onednn.local_response_norm(k, n, alpha, beta, forward)(a)
    return local_response_norm(a, k, n, alpha, beta)


def _matrix_product(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any) -> bool:
    """Whether ``dot_general``'s arguments are a plain (batch, in) x (in, out) product."""
    return lhs.ndim == 2 and rhs.ndim == 2 and dimension_numbers == (((1,), (0,)), ((), ()))


def dense_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
                      precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
    """``lax.dot_general`` for ``nn.Dense(dot_general=...)``: a (batch, in) x (in, out)
    product computed as (rhs^T lhs^T)^T, so that autodiff's input gradient comes out as
    rhs @ g^T, (in, batch).  The barrier keeps XLA from folding the transposes back.
    The same products and sums as the plain form."""
    if not _matrix_product(lhs, rhs, dimension_numbers):
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)
    lhs_t = jax.lax.optimization_barrier(lhs.T)
    return jax.lax.dot_general(rhs, lhs_t, (((0,), (0,)), ((), ())), precision=precision,
                               preferred_element_type=preferred_element_type).T


def onednn_dense_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
                             precision: Any = None,
                             preferred_element_type: Any = None) -> jax.Array:
    """``dense_dot_general``, by ``onednn.matmul`` (oneDNN's sgemm, forward and gradients)
    for a float32 (batch, in) x (in, out) product."""
    if (_matrix_product(lhs, rhs, dimension_numbers)
            and preferred_element_type in (None, jnp.float32) and onednn.supports(lhs, rhs)):
        return onednn.matmul(lhs, rhs)
    return dense_dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)


def onednn_max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    """``max_pool`` by ``onednn.max_pool``'s handlers where they take ``x``
    (``onednn.supports_max_pool``: float32 maps, an AVX-512 CPU), else by XLA."""
    if onednn.supports_max_pool(x, window):
        return onednn.max_pool(window, stride, x.shape[-3], x.shape[-2])(x)
    return max_pool(x, window, stride)


def _window_taps(x: jax.Array, window: int, stride: int) -> list[jax.Array]:
    """The window*window strided slices whose elementwise max is the pooled map."""
    out_h = (x.shape[1] - window) // stride + 1
    out_w = (x.shape[2] - window) // stride + 1
    return [x[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride, :]
            for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    """NHWC max-pooling over window x window patches with VALID padding."""
    return nn.max_pool(x, (window, window), (stride, stride), "VALID")


def _max_pool_forward(x, window, stride):
    taps = _window_taps(x, window, stride)
    y = nn.max_pool(x, (window, window), (stride, stride), "VALID")  # written out once
    # The first winning tap: one select per tap, last to first, in one pass over the taps.
    first = jnp.full(y.shape, len(taps) - 1, jnp.int8)
    for tap in range(len(taps) - 2, -1, -1):
        first = jnp.where(taps[tap] == y, jnp.int8(tap), first)
    return y, (x, _written_out(first))  # x for its shape only


def _written_out(a: jax.Array) -> jax.Array:
    """``a``, through a reduction (a max with zeros, for ``a >= 0``), so that XLA computes
    it once and writes it out: an elementwise result would be fused into, and recomputed
    by, every fusion that reads it.  (XLA:CPU drops optimization barriers before fusing.)"""
    return jnp.max(jnp.stack([a, jnp.zeros_like(a)]), axis=0)


def _shifted(x: jax.Array, axis: int, shift: int, size: int) -> jax.Array:
    """x moved ``shift`` places along ``axis``, zero-filled, cut or padded to ``size``."""
    pads = [(0, 0)] * x.ndim
    pads[axis] = (shift, size - shift - x.shape[axis])
    return jax.lax.pad(x, jnp.zeros((), x.dtype), [(lo, hi, 0) for lo, hi in pads])


def _max_pool_backward(window, stride, residuals, g):
    """Routes each output's gradient to the first input of its window that holds the max.

    Written per stride phase: input row s*q + p receives from the taps p, p + s, ... of
    windows q, q - 1, ...; the s*s phases are then interleaved, so that the input
    gradient is written once."""
    x, first = residuals
    n, height, width, channels = x.shape
    rows, cols = -(-height // stride), -(-width // stride)
    phases = []
    for ph in range(stride):
        for pw in range(stride):
            total = jnp.zeros((n, rows, cols, channels), g.dtype)
            for jh, th in enumerate(range(ph, window, stride)):
                for jw, tw in enumerate(range(pw, window, stride)):
                    hit = jnp.where(first == th * window + tw, g, jnp.zeros_like(g))
                    total = total + _shifted(_shifted(hit, 1, jh, rows), 2, jw, cols)
            phases.append(total)
    grid = jnp.stack(phases, axis=3).reshape(n, rows, cols, stride, stride, channels)
    grid = grid.transpose(0, 1, 3, 2, 4, 5).reshape(n, rows * stride, cols * stride, channels)
    return (grid[:, :height, :width, :],)


max_pool.defvjp(_max_pool_forward, _max_pool_backward)
