"""Convolution and max-pooling with a choice of implementation, same mathematics.

Why this exists: XLA:CPU runs the gradients of ``lax.conv_general_dilated`` slowly,
and grouped convolutions (what ``vmap`` over the towers makes of a convolution)
slower still: on this project's 2-core machine the gradient of the paper's conv1
over two towers took 8.7 s by ``lax.conv`` and 1.1 s written as patches times a
matrix ("im2col").  Written that way, autodiff's weight gradient is one matrix
product (patches^T @ dY) and the input gradient is a sum of shifted slices, both
of which XLA:CPU runs near its matmul rate.  Max-pooling likewise: the gradient of
``reduce_window`` (select-and-scatter) took 88 ms for pool1 of the small model at
batch 128 where the elementwise maximum of the 9 strided window slices took 18 ms;
``_max_pool_taps`` keeps each window's winning tap as an int8 and writes the input
gradient in one pass (the seed network's pool gradients: ~75 -> ~10 ms).
On GPUs and TPUs the vendor kernels are faster, so ``"auto"`` picks these forms on
CPU only.  At ties (ReLU's zeros) both pooling forms send a window's gradient to
its first maximum in row-major order.

That is for the towers' grouped convolutions.  A convolution that is not grouped (one
tower, or one tower per device) XLA:CPU runs faster itself, once its YNNPACK rewrite is
off (``cpu_compiler_options``): the seed network's conv1-conv5 forward took 160 ms at
batch 32, their weight gradients 187 ms, near the machine's matmul rate; ``"auto"``
picks by grouping (``resolve_implementation``).

``Conv2D`` has the parameters ``kernel`` (kh, kw, in, out) and ``bias`` of
``flax.linen.Conv``, so checkpoints do not depend on the implementation.  The dense
layers stay ``flax.linen.Dense``, given ``dense_dot_general`` so that their input
gradient comes out in the orientation Eigen runs fast.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn
from flax.linen.dtypes import promote_dtype

IMPLEMENTATIONS = ("auto", "xla", "im2col")

Padding = str | Sequence[tuple[int, int]]


def cpu_compiler_options() -> dict[str, str]:
    """XLA options for the CPU backend; none elsewhere.

    XLA:CPU (jaxlib 0.10) hands dots and convolutions to YNNPACK by default; Eigen's
    kernels measured faster on every network here: the seed network at batch 32 took
    0.29 s forward and 1.26 s forward-backward with YNNPACK, 0.23 s and 1.03 s without.
    ``ALEXNET_JAX_YNNPACK=1`` keeps XLA's default: YNNPACK's sums do not depend on how
    the batch is split over devices, which tests/test_parallel.py needs.
    """
    if jax.default_backend() != "cpu" or os.environ.get("ALEXNET_JAX_YNNPACK") == "1":
        return {}
    return {"xla_cpu_experimental_ynn_fusion_type": ""}


class jit:  # noqa: N801  (used as jax.jit is)
    """``jax.jit`` with ``cpu_compiler_options()``.

    The backend is looked up at the first call, not at creation: module-level steps must
    not start JAX before ``jax.distributed.initialize``.
    """

    def __init__(self, fn: Callable, **jit_kwargs: Any):
        self._fn, self._jit_kwargs = fn, jit_kwargs
        self._jitted: dict[str, Any] = {}  # per options, so that tests may change them
        functools.update_wrapper(self, fn)

    @property
    def jitted(self) -> Any:
        options = cpu_compiler_options()
        key = repr(sorted(options.items()))
        if key not in self._jitted:
            self._jitted[key] = jax.jit(self._fn, compiler_options=options or None,
                                        **self._jit_kwargs)
        return self._jitted[key]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.jitted(*args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        return self.jitted.lower(*args, **kwargs)


def resolve_implementation(implementation: str, grouped: bool = True) -> str:
    """``"auto"``: im2col for the towers' grouped convolutions on CPU, XLA's own otherwise."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"Unknown convolution implementation {implementation!r}; "
                         f"valid ones are: {', '.join(IMPLEMENTATIONS)}.")
    if implementation == "auto":
        return "im2col" if grouped and jax.default_backend() == "cpu" else "xla"
    return implementation


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


def _window_taps(x: jax.Array, window: int, stride: int) -> list[jax.Array]:
    """The window*window strided slices whose elementwise max is the pooled map."""
    out_h = (x.shape[1] - window) // stride + 1
    out_w = (x.shape[2] - window) // stride + 1
    return [x[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride, :]
            for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_taps(x: jax.Array, window: int, stride: int) -> jax.Array:
    return nn.max_pool(x, (window, window), (stride, stride), "VALID")


def _max_pool_fwd(x, window, stride):
    taps = _window_taps(x, window, stride)
    y = functools.reduce(jnp.maximum, taps)
    # The winning tap as a reduction (argmax over the stacked hits), not as an elementwise
    # chain of compares: XLA fused such a chain into every gradient fusion that read it and
    # recomputed it there (pool1's gradient: 32 ms instead of 7).  x is kept for its shape.
    first = jnp.argmax(jnp.stack([tap == y for tap in taps]), axis=0).astype(jnp.int8)
    return y, (x, first)


def _shifted(x: jax.Array, axis: int, shift: int, size: int) -> jax.Array:
    """x moved ``shift`` places along ``axis``, zero-filled, cut or padded to ``size``."""
    pads = [(0, 0)] * x.ndim
    pads[axis] = (shift, size - shift - x.shape[axis])
    return jax.lax.pad(x, jnp.zeros((), x.dtype), [(lo, hi, 0) for lo, hi in pads])


def _max_pool_bwd(window, stride, residuals, g):
    """Routes each output's gradient to the first input of its window that holds the max
    (as select-and-scatter does).

    Written per stride phase: input row s*q + p receives from the taps p, p + s, ...
    of windows q, q - 1, ...; the s*s phases are then interleaved.  One pass that
    writes the input gradient once (summing nine padded copies wrote it nine times)."""
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


_max_pool_taps.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: int, stride: int, implementation: str = "auto") -> jax.Array:
    """NHWC max-pooling over window x window patches with VALID padding.  ``"auto"`` takes
    the window slices on CPU, grouped or not."""
    if resolve_implementation(implementation, grouped=True) == "xla":
        return nn.max_pool(x, (window, window), (stride, stride), "VALID")
    return _max_pool_taps(x, window, stride)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
           implementation: str = "auto") -> jax.Array:
    """NHWC x HWIO convolution (cross-correlation, as every framework computes it)."""
    size = kernel.shape[0]
    pads = explicit_padding(x.shape[1:3], size, stride, padding)
    if resolve_implementation(implementation) == "xla":
        return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pads,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    patches = im2col(x, size, stride, pads)
    return jnp.einsum("nhwk,ko->nhwo", patches, kernel.reshape(-1, kernel.shape[-1]))


class Conv2D(nn.Module):
    """A square 2-D convolution with bias; parameters kept in float32, computed in ``dtype``."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: Padding = "SAME"
    dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    implementation: str = "auto"
    # Run under the towers' vmap?  Picks the "auto" implementation (resolve_implementation),
    # and the bias add: there the wide-row bias gradient (add_channel_bias) measured slower
    # than autodiff's (small model: 0.21 -> 0.31 s per gradient).
    grouped: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv2d(x, kernel, self.stride, self.padding,
                   resolve_implementation(self.implementation, self.grouped))
        return y + bias if self.grouped else add_channel_bias(y, bias)


def dense_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
                      precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
    """``lax.dot_general`` for ``nn.Dense(dot_general=...)``: on CPU, a (batch, in) x (in, out)
    product is computed as (rhs^T lhs^T)^T so that autodiff's input gradient comes out as
    rhs @ g^T, (in, batch), the orientation Eigen's matrix product runs fast.  Autodiff's own
    form, g @ rhs^T with (batch, in) out, took 80 ms for fc6 at batch 32 where this one
    takes 14 ms.  The barrier keeps XLA from folding the transposes back into that form.
    Same products and sums: the default experiment trained bitwise as before."""
    plain = lhs.ndim == 2 and rhs.ndim == 2 and dimension_numbers == (((1,), (0,)), ((), ()))
    if not plain or jax.default_backend() != "cpu":
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)
    lhs_t = jax.lax.optimization_barrier(lhs.T)
    return jax.lax.dot_general(rhs, lhs_t, (((0,), (0,)), ((), ())), precision=precision,
                               preferred_element_type=preferred_element_type).T


def add_channel_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """``y + bias`` over the last axis of an NHWC map, written so that the bias gradient is
    fast on CPU: as rows of W*C values plus the bias tiled W times, autodiff sums the
    gradient over N*H wide rows, then over W.  XLA:CPU ran the plain form's sum over N, H
    and W, rows of only C=64-384 values, at ~1 GB/s: 57 ms of the seed network's gradient,
    against ~5 ms this way.  (Plain autodiff rather than a custom VJP, so that under
    shard_map the gradient of a bias replicated over data replicas is summed over them.)"""
    n, h, w, c = y.shape
    return (y.reshape(n * h, w * c) + jnp.tile(bias, w)).reshape(y.shape)
