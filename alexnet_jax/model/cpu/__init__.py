"""The optional CPU extra: what makes XLA:CPU fast for this network, kept apart from the
portable model and trainer (deleting this folder leaves them working, with the plain
layers of ``alexnet_jax/model/layers/``).

* ``chooser.py``: which of the forms below run when (``layers.select`` asks it);
* ``xla_cpu.py``: forms of the layers that XLA:CPU runs fast, and its compiler options;
* ``onednn.py`` and ``onednn_kernels.cc``: oneDNN's convolutions, dense products and
  LRN, and max-pooling handlers of our own, called through XLA's FFI (``make kernels``
  builds them);
* ``malloc_tunables.py``: malloc that keeps what it frees, which the entry points
  restart with;
* ``devices.py``: the flags forced host devices need.

``prepare_process`` is what an entry point calls first, before JAX starts, and only where
the backend will be the CPU (``devices.backend_is_cpu``).
"""
from __future__ import annotations

from alexnet_jax.model.cpu import devices, malloc_tunables


def prepare_process() -> None:
    """Where this process's JAX will run on the CPU: gives forced host devices their flags
    and restarts the process with the malloc tunables (it may not return: ``exec``)."""
    if not devices.backend_is_cpu():
        return
    devices.give_forced_devices_their_flags()
    malloc_tunables.restart_with_malloc_tunables()
