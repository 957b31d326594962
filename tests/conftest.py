"""Session-wide settings: one persistent XLA compilation cache for every test process,
and forced host devices' flags as the entry points give them.

The trainer jit-compiles its steps per run; runs of equal configs (in this process, in
the other pytest worker, in subprocesses started by tests) then load the compiled
steps from this cache instead of compiling them again.
"""
import os
import tempfile

try:  # the CPU extra, which a project without alexnet_jax/model/cpu/ lacks
    from alexnet_jax.model.cpu import devices
    devices.give_forced_devices_their_flags()  # `make test`'s 8 devices: before JAX starts
except ImportError:
    pass

CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"alexnet_jax_tests_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
