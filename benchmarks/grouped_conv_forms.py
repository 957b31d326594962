"""The towers' grouped convolution on XLA:CPU in four forms, forward and gradient.

    python -m benchmarks.grouped_conv_forms

Two towers side by side (``vmap`` over the tower axis), per tower the shapes of the small
network's conv1 (its image shared by the towers), conv2 and conv4 and of the paper network's
conv2.  Forms: XLA's own grouped convolution (what ``vmap`` makes of ``lax.conv``:
``model.implementation=plain``), im2col (``model.implementation=im2col``), one ungrouped
convolution of the towers' maps side by side with a block-diagonal kernel (not for a shared
image), and one ungrouped convolution per tower (``xla_cpu.per_tower_conv2d``, today's CPU
form, which convolves a shared image once for every tower).  Prints the median of 15
calls, in ms, of the forward and of the forward with both gradients (autodiff; for conv1 the
kernel's only, as in training: nothing needs the image's); ``docs/performance.md`` has a run.
"""
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.model.cpu import xla_cpu
from benchmarks.timing import median_ms

TOWERS = 2
SHAPES = {  # per tower: batch, side, input maps, output maps, kernel
    "small conv1": (64, 28, 1, 24, 5),  # the towers share the image
    "small conv2": (64, 13, 24, 48, 3),
    "small conv4": (64, 6, 64, 64, 3),
    "paper conv2": (32, 27, 48, 128, 5),
}


def xla_conv(x, kernel, pads):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _towers(xs):
    """vmap's in_axes for the input: mapped, or shared (one image for every tower)."""
    return 0 if xs.ndim == 5 else None


def xla_grouped(xs, kernels, pads):
    return jax.vmap(lambda x, k: xla_conv(x, k, pads), (_towers(xs), 0))(xs, kernels)


def im2col(xs, kernels, pads):
    return jax.vmap(lambda x, k: xla_cpu.conv2d(x, k, 1, pads, "im2col"),
                    (_towers(xs), 0))(xs, kernels)


def per_tower(xs, kernels, pads):
    return jax.vmap(lambda x, k: xla_cpu.conv2d(x, k, 1, pads, "per_tower"),
                    (_towers(xs), 0))(xs, kernels)


def block_diagonal(xs, kernels, pads):
    towers, n, h, w, c = xs.shape
    kh, kw, _, o = kernels.shape[1:]
    side_by_side = xs.transpose(1, 2, 3, 0, 4).reshape(n, h, w, towers * c)
    blocks = jnp.einsum("tabco,ts->abtcso", kernels, jnp.eye(towers, dtype=kernels.dtype))
    y = xla_conv(side_by_side, blocks.reshape(kh, kw, towers * c, towers * o), pads)
    return y.reshape(n, h, w, towers, o).transpose(3, 0, 1, 2, 4)


def main():
    options = xla_cpu.compiler_options()
    for name, (n, side, c, o, k) in SHAPES.items():
        shared = c == 1
        xs = jax.random.normal(jax.random.PRNGKey(0),
                               (n, side, side, c) if shared else (TOWERS, n, side, side, c))
        kernels = jax.random.normal(jax.random.PRNGKey(1), (TOWERS, k, k, c, o)) * 0.1
        pads = ((k // 2, k // 2),) * 2
        reference = im2col(xs, kernels, pads)
        forms = [("xla grouped", xla_grouped), ("im2col", im2col)]
        forms += [] if shared else [("block-diagonal", block_diagonal)]
        for form_name, form in forms + [("per tower", per_tower)]:
            np.testing.assert_allclose(form(xs, kernels, pads), reference, rtol=1e-3, atol=1e-3)
            forward = jax.jit(lambda xs, ks, f=form, p=pads: f(xs, ks, p),
                              compiler_options=options)
            gradient = jax.jit(jax.grad(lambda xs, ks, f=form, p=pads: jnp.sum(f(xs, ks, p) ** 2),
                                        argnums=(1,) if shared else (0, 1)),
                               compiler_options=options)
            print(f"{name:12} {form_name:15} forward {median_ms(forward, xs, kernels):8.2f} ms"
                  f"   with gradients {median_ms(gradient, xs, kernels):8.2f} ms", flush=True)


if __name__ == "__main__":
    main()
