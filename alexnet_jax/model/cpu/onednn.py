"""oneDNN's convolutions, matrix products and LRN on the CPU backend, and loops of our own
beside them, called from jitted code through XLA's FFI.

XLA:CPU convolves with Eigen's kernels; oneDNN's (the library TensorFlow's CPU build runs)
compute the same convolutions faster on x86.  ``onednn_kernels.cc`` wraps them for XLA's FFI
(the forward with the bias; the input, kernel and bias gradients in one call; the kernel
and bias gradients alone, for an input that is not differentiated), and ``conv2d_bias``
is their ``custom_vjp``: the same mathematics as XLA's convolution plus a bias, in another
order of summation.  ``matmul`` is a dense layer's product by oneDNN's sgemm, forward and
gradients.  ``local_response_norm`` is LRN across channels for an odd window: oneDNN's
forward, and a gradient handler of our own (one pass over the maps, each where XLA makes
several).  ``max_pool`` is max-pooling by a handler of our own that also keeps each
window's winning tap, and its gradient, which routes the cotangent there: one pass each.
``tests/model/test_layers.py`` checks them against float64 NumPy or XLA's own forms.

The handlers are compiled against the ``onednn-devel-cpu-gomp`` wheel's headers and
library (``requirements.txt``) by ``make`` (``make kernels``: ``main`` here).  Where the
library or a C++ compiler is missing, or the build is older than its source,
``register()`` is False and XLA's forms run (``chooser.py``).
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = pathlib.Path(__file__).with_name("onednn_kernels.cc")
LIBRARY = pathlib.Path(__file__).with_name("_onednn_kernels.so")
HANDLERS = {"alexnet_conv_forward": "AlexnetConvForward",
            "alexnet_conv_backward": "AlexnetConvBackward",
            "alexnet_conv_backward_weights": "AlexnetConvBackwardWeights",
            "alexnet_lrn_forward": "AlexnetLrnForward",
            "alexnet_lrn_backward": "AlexnetLrnBackward",
            "alexnet_matmul": "AlexnetMatmul",
            "alexnet_max_pool": "AlexnetMaxPool",
            "alexnet_max_pool_backward": "AlexnetMaxPoolBackward"}


def _onednn_library() -> pathlib.Path:
    """oneDNN's shared library, as the ``onednn-cpu-gomp`` wheel installs it."""
    return pathlib.Path(sys.prefix) / "lib" / "libdnnl.so.3"


def build(compiler: str = "g++") -> pathlib.Path:
    """Compiles ``onednn_kernels.cc`` into ``LIBRARY``; raises ``RuntimeError`` saying why not."""
    include = pathlib.Path(sys.prefix) / "include"
    if not (include / "oneapi" / "dnnl" / "dnnl.hpp").exists() or not _onednn_library().exists():
        raise RuntimeError(f"oneDNN's headers or library are not under {sys.prefix}: install "
                           "requirements.txt (onednn-cpu-gomp, onednn-devel-cpu-gomp) first.")
    command = [compiler, "-O3", "-fno-math-errno", "-fopenmp", "-std=c++17", "-shared", "-fPIC",
               "-w", str(SOURCE), f"-I{include}", f"-I{jax.ffi.include_dir()}",
               f"-L{_onednn_library().parent}", "-ldnnl", "-o", str(LIBRARY)]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError as error:
        raise RuntimeError(f"no C++ compiler {compiler!r} on this machine") from error
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"{' '.join(command)} failed:\n{error.stderr}") from error
    return LIBRARY


@functools.cache
def register() -> bool:
    """Loads the handlers and registers them with XLA's CPU backend, once; True where they
    are built from the current source and that worked.  Says why not in the log (XLA's
    forms run then).  Also sets ``OMP_WAIT_POLICY`` (below) before oneDNN starts."""
    if not LIBRARY.exists() or not _onednn_library().exists():
        logging.info("oneDNN convolutions not built (%s); XLA's are used. `make kernels` "
                     "builds them.", LIBRARY)
        return False
    if LIBRARY.stat().st_mtime < SOURCE.stat().st_mtime:
        logging.warning("%s is older than %s; XLA's convolutions are used until `make "
                        "kernels` rebuilds it.", LIBRARY.name, SOURCE.name)
        return False
    # oneDNN's OpenMP threads sleep between calls instead of spinning, so that XLA's own
    # threads get the cores back at once.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        ctypes.CDLL(str(_onednn_library()), mode=ctypes.RTLD_GLOBAL)
        handlers = {target: getattr(_handlers_library(), symbol)
                    for target, symbol in HANDLERS.items()}
    except (OSError, AttributeError) as error:
        logging.warning("oneDNN convolutions not loaded (%s); XLA's are used. `make kernels` "
                        "rebuilds them.", error)
        return False
    for target, handler in handlers.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
    return True


def _handlers_library() -> ctypes.CDLL:
    """``LIBRARY`` (after oneDNN's own library, which ``register`` loads; the loader keeps
    one copy however often it is asked)."""
    return ctypes.CDLL(str(LIBRARY))


def _out_size(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> int:
    return (size + pads[0] + pads[1] - kernel) // stride + 1


def _call(target: str, results, *operands, vmap_method: str = "sequential", **attributes):
    return jax.ffi.ffi_call(target, results, vmap_method=vmap_method)(*operands, **attributes)


def _gradient_shapes(x: jax.Array | None, kernel: jax.Array):
    """The result shapes of the backward handlers: dx (where asked), dkernel, dbias."""
    like = [] if x is None else [jax.ShapeDtypeStruct(x.shape, x.dtype)]
    return (*like, jax.ShapeDtypeStruct(kernel.shape, kernel.dtype),
            jax.ShapeDtypeStruct(kernel.shape[-1:], kernel.dtype))


def _dense(value):
    """A cotangent as an array (``symbolic_zeros`` passes zeros symbolically)."""
    if isinstance(value, jax.custom_derivatives.SymbolicZero):
        return jnp.zeros(value.shape, value.dtype)
    return value


@functools.cache
def conv2d_bias(stride: int, pads: tuple[tuple[int, int], ...]) -> Callable:
    """``(x, kernel, bias) -> conv(x, kernel) + bias`` for NHWC float32 ``x`` and an HWIO
    ``kernel``, with explicit (low, high) ``pads`` per spatial axis, by oneDNN forward and
    backward.  The backward is one call, which skips the input gradient where the input is
    not differentiated (the image).  Needs ``register()``."""
    (top, bottom), (left, right) = pads
    attributes = dict(stride=np.int64(stride), pad_top=np.int64(top),
                      pad_bottom=np.int64(bottom), pad_left=np.int64(left),
                      pad_right=np.int64(right))

    def forward(x, kernel, bias):
        n, h, w, _ = x.shape
        kh, kw, _, out = kernel.shape
        shape = (n, _out_size(h, kh, stride, (top, bottom)),
                 _out_size(w, kw, stride, (left, right)), out)
        return _call("alexnet_conv_forward", jax.ShapeDtypeStruct(shape, x.dtype), x, kernel,
                     bias, **attributes)

    @jax.custom_vjp
    def conv(x, kernel, bias):
        return forward(x, kernel, bias)

    def conv_forward(x, kernel, bias):
        y = forward(x.value, kernel.value, bias.value)
        # The residuals' structure says whether x is differentiated.
        return y, (x.value, kernel.value) + (() if x.perturbed else (None,))

    def conv_backward(residuals, g):
        x, kernel = residuals[:2]
        g = _dense(g)
        if len(residuals) == 3:
            dkernel, dbias = _call("alexnet_conv_backward_weights",
                                   _gradient_shapes(None, kernel), x, g, **attributes)
            return None, dkernel, dbias
        return _call("alexnet_conv_backward", _gradient_shapes(x, kernel), x, kernel, g,
                     **attributes)

    conv.defvjp(conv_forward, conv_backward, symbolic_zeros=True)
    return conv


@functools.cache
def local_response_norm(k: float, n: int, alpha: float, beta: float,
                        forward: Callable | None = None) -> Callable:
    """``a -> b``, ``lrn.local_response_norm`` by oneDNN's forward (or by ``forward(a, k, n,
    alpha, beta)``, XLA's form, where oneDNN has no kernel of its own for the maps:
    ``lrn_forward_is_jit``) and our handler's gradient, for the ``a`` and ``n`` that
    ``supports_lrn`` takes.  Axes before the last three count as the batch, so that a
    vmapped call is one call.  The gradient reads only ``a`` and the cotangent."""
    attributes = dict(size=np.int64(n), alpha=np.float32(alpha), beta=np.float32(beta),
                      k=np.float32(k))

    def call(target, *operands):
        like = jax.ShapeDtypeStruct(operands[0].shape, operands[0].dtype)
        return _call(target, like, *operands, vmap_method="broadcast_all", **attributes)

    def normalised(a):
        return forward(a, k, n, alpha, beta) if forward else call("alexnet_lrn_forward", a)

    lrn = jax.custom_vjp(normalised)
    lrn.defvjp(lambda a: (normalised(a), a),
               lambda a, g: (call("alexnet_lrn_backward", a, g),))
    return lrn


@functools.cache
def lrn_forward_is_jit(shape: tuple[int, ...], n: int) -> bool:
    """Whether oneDNN runs the LRN forward of NHWC maps of ``shape`` (axes before the last
    three as the batch) with a kernel of its own here, not its reference loop: for
    channels-last maps its kernels need AVX-512 (``ONEDNN_MAX_CPU_ISA`` counts); on an
    AVX2 CPU its loop takes ~3x XLA's form's time (docs/performance.md)."""
    images = int(np.prod(shape[:-3]))
    return register() and bool(_handlers_library().AlexnetLrnForwardIsJit(
        ctypes.c_int64(images), *(ctypes.c_int64(d) for d in shape[-3:]), ctypes.c_int64(n)))


def _matmul(a: jax.Array, b: jax.Array, transpose_a: bool = False,
            transpose_b: bool = False) -> jax.Array:
    rows = a.shape[1] if transpose_a else a.shape[0]
    columns = b.shape[0] if transpose_b else b.shape[1]
    return _call("alexnet_matmul", jax.ShapeDtypeStruct((rows, columns), a.dtype), a, b,
                 transpose_a=transpose_a, transpose_b=transpose_b)


@jax.custom_vjp
def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` for float32 matrices, (batch, in) x (in, out), by oneDNN's sgemm,
    forward and gradients.  The input gradient is computed as kernel @ g^T, (in, batch),
    the orientation sgemm runs fastest for a small batch.  Needs ``register()``."""
    return _matmul(x, kernel)


matmul.defvjp(lambda x, kernel: (_matmul(x, kernel), (x, kernel)),
              lambda residuals, g: (_matmul(residuals[1], g.T).T,
                                    _matmul(residuals[0], g, transpose_a=True)))


@functools.cache
def max_pool(window: int, stride: int, height: int, width: int) -> Callable:
    """``x -> y``: max-pooling of NHWC ``x`` maps ``height`` x ``width`` over VALID
    ``window`` x ``window`` windows, by a handler of our own, and its gradient, which sends
    each output's cotangent to the first input of its window that holds the max (in
    row-major order, as XLA's select-and-scatter does).  NaNs win, as in XLA's max.  Axes
    before the last three count as the batch."""
    attributes = dict(window=np.int64(window), stride=np.int64(stride))

    def pool_with_taps(x):
        shape = (*x.shape[:-3], (height - window) // stride + 1,
                 (width - window) // stride + 1, x.shape[-1])
        return _call("alexnet_max_pool", (jax.ShapeDtypeStruct(shape, x.dtype),
                                          jax.ShapeDtypeStruct(shape, jnp.int8)),
                     x, vmap_method="broadcast_all", **attributes)

    def gradient(first, g):
        like = jax.ShapeDtypeStruct((*g.shape[:-3], height, width, g.shape[-1]), g.dtype)
        return (_call("alexnet_max_pool_backward", like, first, g,
                      vmap_method="broadcast_all", **attributes),)

    @jax.custom_vjp
    def pool(x):
        return pool_with_taps(x)[0]

    pool.defvjp(pool_with_taps, gradient)  # (y, first) is (output, residual)
    return pool


def supports(*operands: jax.Array) -> bool:
    """Whether oneDNN's handlers are built and registered (``register()``) and take these
    operands: float32 only."""
    return all(a.dtype == jnp.float32 for a in operands) and register()


def supports_lrn(a: jax.Array, n: int) -> bool:
    """Whether ``local_response_norm`` takes ``a`` (float32, NHWC) with an ``n``-channel
    window: odd ``n`` (oneDNN centres an even window otherwise than ``lrn.py``)."""
    return n % 2 == 1 and a.ndim >= 4 and supports(a)


@functools.cache
def max_pool_vectorized() -> bool:
    """Whether ``max_pool``'s handler runs vectorized on this CPU (AVX-512): its scalar loop
    is slower than XLA's form.  ``ONEDNN_MAX_CPU_ISA`` below AVX-512 (``AVX2``, say) holds
    it back as it holds oneDNN's kernels, so that one machine runs as a smaller CPU would
    (``scripts/test_isas.sh``, ``benchmarks/layers_vs_tf.py``)."""
    return (register() and allows_avx512(os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL"))
            and bool(_handlers_library().AlexnetMaxPoolVectorized()))


def allows_avx512(max_isa: str) -> bool:
    """Whether oneDNN's ``ONEDNN_MAX_CPU_ISA`` value lets AVX-512 code run: ``ALL`` and the
    AVX-512 and AVX10 names do; ``SSE41``, ``AVX``, ``AVX2`` and its VNNI forms do not."""
    return max_isa.upper() == "ALL" or max_isa.upper().startswith(("AVX512", "AVX10"))


def supports_max_pool(x: jax.Array, window: int) -> bool:
    """Whether ``max_pool`` takes ``x`` (float32, NHWC) with ``window`` x ``window``
    windows, up to 11 x 11 (the winning tap is an int8), and runs vectorized here."""
    return 1 <= window <= 11 and x.ndim >= 4 and supports(x) and max_pool_vectorized()


def main() -> None:
    """``make kernels``: builds the handlers, or says why not (XLA's convolutions run then)."""
    try:
        print(f"built {build()}")
    except RuntimeError as error:
        print(f"oneDNN convolutions not built; XLA's will be used. {error}", file=sys.stderr)
