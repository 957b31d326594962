"""The plain forms of the layers that are not Flax modules already."""
from __future__ import annotations

import flax.linen as nn
import jax


def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    """NHWC max-pooling over window x window patches with VALID padding (``reduce_window``)."""
    return nn.max_pool(x, (window, window), (stride, stride), "VALID")
