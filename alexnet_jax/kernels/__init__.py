"""The network's layers, and the one place that chooses them for a backend and a layout.

``models.py`` writes AlexNet once and takes its layers as attributes (a ``Layers``
value), as Flax's ResNet takes ``conv: ModuleDef``.  The plain forms (``nn.Conv``,
``nn.Dense``, ``reduce_window`` max-pooling, autodiff's gradients) are the default and
what every accelerator runs.  XLA:CPU runs some of them slowly, so ``xla_cpu.py`` holds
forms of the same mathematics, with the same parameters, that it runs fast; ``select``
picks between them.  Checkpoints do not depend on the choice.

``implementation`` (``config.model.implementation``):

* ``auto``: the CPU forms on the CPU backend, with the handlers of ``onednn.py`` where
  they are built (oneDNN's convolutions, dense products and local response normalisation,
  and max-pooling), the plain forms elsewhere;
* ``plain``: the plain forms on every backend;
* ``xla``: the CPU forms with XLA's own convolutions only;
* ``im2col``: the CPU forms with every convolution written as patches times a matrix,
  grouped or not (one arithmetic for every layout: the layout tests use it).

Local response normalisation is one op with one hand-written gradient (``lrn.py``) on
every backend; where oneDNN's convolutions run, its odd windows run in ``onednn.py``'s
handlers (oneDNN's forward, a gradient of our own).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax

from alexnet_jax.kernels import onednn, plain, xla_cpu
from alexnet_jax.kernels.lrn import local_response_norm

__all__ = ["IMPLEMENTATIONS", "Layers", "PLAIN", "compiler_options", "local_response_norm",
           "select"]

IMPLEMENTATIONS = ("auto", "plain", "xla", "im2col")

ModuleDef = Any


@dataclasses.dataclass(frozen=True)
class Layers:
    """What the network builds its layers from.

    ``conv`` and ``dense`` take ``flax.linen.Conv``'s and ``flax.linen.Dense``'s arguments
    and create the same parameters; ``max_pool(x, window, stride)`` pools NHWC maps with
    VALID padding; ``lrn(a, k, n, alpha, beta)`` is ``lrn.local_response_norm``'s
    arithmetic."""

    conv: ModuleDef = nn.Conv
    dense: ModuleDef = nn.Dense
    max_pool: Callable[[jax.Array, int, int], jax.Array] = plain.max_pool
    lrn: Callable[[jax.Array, float, int, float, float], jax.Array] = local_response_norm
    name: str = "plain"


PLAIN = Layers()


def select(implementation: str = "auto", grouped: bool = False,
           backend: str | None = None, towers_on_devices: bool = False) -> Layers:
    """The layers for ``backend`` (default: JAX's) when the towers' convolutions are
    ``grouped`` (several towers side by side on one device, under vmap) or not, and the
    towers live on devices of their own (``towers_on_devices``) or not."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"Unknown implementation {implementation!r}; valid ones are: "
                         f"{', '.join(IMPLEMENTATIONS)}.")
    backend = backend or jax.default_backend()
    if implementation == "plain" or (implementation == "auto" and backend != "cpu"):
        return PLAIN
    # XLA:CPU's own grouped convolution is slow (its gradient above all), its ungrouped
    # one fast: the towers side by side run one ungrouped convolution each; forced
    # "im2col" writes every convolution as patches times a matrix.
    form = "im2col" if implementation == "im2col" else "per_tower" if grouped else "xla"
    # oneDNN's convolutions (ungrouped ones: one call per tower side by side measured
    # slower) have their own VJP; where the towers live on devices, JAX sums a replicated
    # kernel's gradient over the data replicas only through autodiff.  The dense, LRN and
    # pooling handlers go with them.
    use_onednn = (implementation == "auto" and form == "xla" and not towers_on_devices
                  and onednn.available())
    name = "xla_cpu" if form == "xla" else f"xla_cpu_{form}"
    dot_general = xla_cpu.onednn_dense_dot_general if use_onednn else xla_cpu.dense_dot_general
    return Layers(conv=functools.partial(xla_cpu.Conv, form=form, wide_bias=not grouped,
                                         use_onednn=use_onednn),
                  dense=functools.partial(nn.Dense, dot_general=dot_general),
                  max_pool=xla_cpu.onednn_max_pool if use_onednn else xla_cpu.max_pool,
                  lrn=xla_cpu.onednn_local_response_norm if use_onednn else local_response_norm,
                  name=f"{name}_onednn" if use_onednn else name)


def compiler_options(backend: str | None = None) -> dict[str, str]:
    """XLA compiler options for jitted steps on ``backend`` (default: JAX's); none but on CPU."""
    if (backend or jax.default_backend()) == "cpu":
        return xla_cpu.compiler_options()
    return {}
