"""Which of the CPU extra's forms run when: the one place that says so.

``layers.select`` calls ``cpu_layers`` for programs that run on the CPU.  For
``implementation``:

* ``auto``:
  - towers side by side on one device (``grouped``: the two-tower networks on one device
    or under the ``data`` layout): ``xla_cpu.Conv`` with ``form="per_tower"`` (one
    ungrouped XLA convolution per tower; XLA:CPU's grouped one is slow), XLA's forms of
    pooling, dense products and LRN;
  - one tower per device, or a lone tower (``tf_benchmark``, ``one_tower``,
    ``model.towers=1``), where oneDNN's handlers are built (``onednn.register``):
    oneDNN's convolutions with their bias (forward and gradients), dense products by
    oneDNN's sgemm, LRN by oneDNN's forward (XLA's where oneDNN has only its reference
    loop for the maps: ``onednn.lrn_forward_is_jit``) and a gradient of our own for odd
    windows (``onednn.supports_lrn``), and max-pooling by a handler of our own where it runs
    vectorized (AVX-512: ``onednn.max_pool_vectorized``); each falls back to XLA's form
    outside float32 or the shapes its handler takes;
  - except where the towers live on devices of their own (``model`` and
    ``data_model``): there JAX sums a replicated kernel's gradient over the data
    replicas only through autodiff, which the handlers' custom VJPs would bypass, so
    XLA's convolution and the plain dense product run (``wide_bias`` still applies);
  - where oneDNN's handlers are not built (no C++ compiler, ``make kernels`` not run, a
    build older than its source): XLA's forms.
* ``xla``: XLA's forms throughout (no oneDNN), per tower where grouped.
* ``im2col``: every convolution as patches times a matrix, grouped or not.

XLA's forms are ``xla_cpu.py``'s; oneDNN's handlers are ``onednn.py``'s.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn

from alexnet_jax.model.cpu import onednn, xla_cpu

compiler_options = xla_cpu.compiler_options


def cpu_layers(implementation: str, grouped: bool, towers_on_devices: bool) -> dict[str, Any]:
    """The fields of ``layers.Layers`` that differ from the plain forms, for
    ``implementation`` (``auto``, ``xla`` or ``im2col``), by the rule of the module
    docstring."""
    form = "im2col" if implementation == "im2col" else "per_tower" if grouped else "xla"
    use_onednn = (implementation == "auto" and form == "xla" and not towers_on_devices
                  and onednn.register())
    name = "xla_cpu" if form == "xla" else f"xla_cpu_{form}"
    dot_general = xla_cpu.onednn_dense_dot_general if use_onednn else xla_cpu.dense_dot_general
    fields = dict(conv=functools.partial(xla_cpu.Conv, form=form, wide_bias=not grouped,
                                         use_onednn=use_onednn),
                  dense=functools.partial(nn.Dense, dot_general=dot_general),
                  max_pool=xla_cpu.onednn_max_pool if use_onednn else xla_cpu.max_pool,
                  name=f"{name}_onednn" if use_onednn else name)
    if use_onednn:
        fields["lrn"] = xla_cpu.onednn_local_response_norm
    return fields
