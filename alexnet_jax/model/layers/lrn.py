"""Local response normalisation as one op with one hand-written gradient, on every backend.

    b[c] = a[c] / (k + alpha * sum_{c' in window(c)} a[c']^2) ** beta

``components.LocalResponseNorm`` documents the conventions; this is its arithmetic.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def channel_window_sum(x: jax.Array, before: int, after: int) -> jax.Array:
    """sum_{c' = c - before}^{c + after} x[..., c'], clipped at the first and last channel.

    Shifted slices, which XLA fuses into one loop (reduce_window's gradient is a
    separate, slower pass)."""
    channels = x.shape[-1]
    padded = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(before, after)])
    return sum(padded[..., i:i + channels] for i in range(before + after + 1))


def inverse_power(d: jax.Array, beta: float) -> jax.Array:
    """d ** -beta; for the paper's beta = 0.75 as rsqrt(d) * sqrt(rsqrt(d)), the same
    number in exact arithmetic and cheaper than a general power (exp and log)."""
    if beta == 0.75:
        inverse_sqrt = jax.lax.rsqrt(d)
        return inverse_sqrt * jnp.sqrt(inverse_sqrt)
    return d ** (-beta)


def _forward(a, k, n, alpha, beta):
    denominator = k + alpha * channel_window_sum(a * a, n // 2, (n - 1) // 2)
    scale = inverse_power(denominator, beta)
    return a * scale, (a, denominator, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def local_response_norm(a: jax.Array, k: float, n: int, alpha: float, beta: float) -> jax.Array:
    """The window holds ``n`` adjacent channels centred on c (for even n: n//2 before,
    (n-1)//2 after) and is clipped at the first and last channel; alpha is not divided by n.

    Gradient, with d = k + alpha sum a^2 and s = d^-beta:

        d b[c] / d a[j] = s[c] [c = j] - 2 alpha beta a[c] a[j] s[c] / d[c]   (j in window(c))

    where the second term sums over the channels c whose window holds j (the window
    mirrored)."""
    return _forward(a, k, n, alpha, beta)[0]


def _backward(k, n, alpha, beta, residuals, g):
    a, denominator, scale = residuals
    spread = channel_window_sum(g * a * scale / denominator, (n - 1) // 2, n // 2)
    return (g * scale - 2.0 * alpha * beta * a * spread,)


local_response_norm.defvjp(_forward, _backward)
