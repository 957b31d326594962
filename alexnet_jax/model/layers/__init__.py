"""The network's layers, and the one place that chooses them for a platform and a layout.

``networks.py`` writes AlexNet once and takes its layers as attributes (a ``Layers``
value), as Flax's ResNet takes ``conv: ModuleDef``.  The plain forms here (``nn.Conv``,
``nn.Dense``, ``reduce_window`` max-pooling, and ``lrn.py``'s local response
normalisation with its hand-written gradient) are the default and what every
accelerator runs.  On the CPU, the optional CPU extra (``alexnet_jax/model/cpu/``) has forms of
the same mathematics, with the same parameters, that XLA:CPU runs fast; ``select``
takes them from there where it is installed.  Checkpoints do not depend on the choice.

``implementation`` (``config.model.implementation``):

* ``auto``: the CPU extra's choice on the CPU platform (``cpu.chooser.cpu_layers`` says
  which forms run when), the plain forms on every other platform or without the extra;
* ``plain``: the plain forms everywhere;
* ``xla``, ``im2col``: the CPU extra's forms with XLA's own convolutions, or with every
  convolution as patches times a matrix (one arithmetic for every layout: the layout
  tests use it).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from alexnet_jax.model.layers import plain
from alexnet_jax.model.layers.lrn import local_response_norm

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


def _cpu_extra() -> Any:
    """The CPU extra's chooser, or None where ``alexnet_jax/model/cpu/`` is not installed."""
    try:
        from alexnet_jax.model.cpu import chooser
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("alexnet_jax.model.cpu"):
            raise
        return None
    return chooser


def select(implementation: str = "auto", platform: str | None = None, grouped: bool = False,
           towers_on_devices: bool = False) -> Layers:
    """The layers for a program that runs on ``platform`` (default: JAX's default backend;
    a CPU host can build the program a GPU or TPU runs), when the towers' convolutions
    are ``grouped`` (several towers side by side on one device, under vmap) or not, and
    the towers live on devices of their own (``towers_on_devices``) or not."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"Unknown implementation {implementation!r}; valid ones are: "
                         f"{', '.join(IMPLEMENTATIONS)}.")
    platform = platform or jax.default_backend()
    if implementation == "plain" or (implementation == "auto" and platform != "cpu"):
        return PLAIN
    chooser = _cpu_extra()
    if chooser is None:
        if implementation == "auto":
            return PLAIN
        raise ValueError(f"model.implementation={implementation} takes its forms from the CPU "
                         "extra (alexnet_jax/model/cpu/), which is not installed; use auto or "
                         "plain.")
    return dataclasses.replace(PLAIN, **chooser.cpu_layers(implementation, grouped,
                                                           towers_on_devices))


def compiler_options(platform: str | None = None) -> dict[str, str]:
    """XLA compiler options for jitted steps on ``platform`` (default: JAX's); the CPU
    extra's on the CPU, none elsewhere."""
    chooser = _cpu_extra() if (platform or jax.default_backend()) == "cpu" else None
    return chooser.compiler_options() if chooser is not None else {}
