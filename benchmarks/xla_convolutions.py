"""The seed network's five convolutions (batch 32, float32) by XLA:CPU with the project's
compiler options: forward, backward-data and backward-weights, median of 15 calls, in ms.

    python -m benchmarks.xla_convolutions

The counterpart of ``benchmarks/onednn_convolutions.cpp`` (``scripts/onednn_probe.sh``
runs both); ``docs/performance.md`` has a run.
"""
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.model.cpu import xla_cpu
from benchmarks.timing import median_ms

# name, batch, side, input maps, output maps, kernel, stride (SAME padding throughout)
CONVOLUTIONS = [("conv1", 32, 224, 3, 64, 11, 4), ("conv2", 32, 27, 64, 192, 5, 1),
                ("conv3", 32, 13, 192, 384, 3, 1), ("conv4", 32, 13, 384, 256, 3, 1),
                ("conv5", 32, 13, 256, 256, 3, 1)]


def main():
    options = xla_cpu.compiler_options()
    totals = np.zeros(3)
    for name, batch, side, maps_in, maps_out, kernel, stride in CONVOLUTIONS:
        x = jax.random.normal(jax.random.PRNGKey(0), (batch, side, side, maps_in))
        w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, maps_in, maps_out)) * 0.01

        def conv(x, w, stride=stride):
            return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))

        g = jnp.full(conv(x, w).shape, 0.1)
        forward = jax.jit(conv, compiler_options=options)
        backward_data = jax.jit(
            lambda x, w, g, conv=conv: jax.vjp(lambda x: conv(x, w), x)[1](g)[0],
            compiler_options=options)
        backward_weights = jax.jit(
            lambda x, w, g, conv=conv: jax.vjp(lambda w: conv(x, w), w)[1](g)[0],
            compiler_options=options)
        times = np.array([median_ms(forward, x, w), median_ms(backward_data, x, w, g),
                          median_ms(backward_weights, x, w, g)])
        totals += times
        print(f"{name} xla    fwd {times[0]:8.2f} ms  bwd_data {times[1]:8.2f} ms  "
              f"bwd_weights {times[2]:8.2f} ms", flush=True)
    print(f"total ms: forward {totals[0]:.1f}, backward-data {totals[1]:.1f}, "
          f"backward-weights {totals[2]:.1f}")


if __name__ == "__main__":
    main()
