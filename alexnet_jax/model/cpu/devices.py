"""The CPU as JAX's backend: whether it will be, and the flags forced host devices need.

``XLA_FLAGS=--xla_force_host_platform_device_count=N`` splits the CPU into N devices,
which wait for each other at every collective.  Two XLA:CPU defaults then fail under
load: the devices share Eigen's thread pool, so that one device's work can starve
another's while the rest wait in a collective, and a collective that waits 40 s aborts
the process.  ``give_forced_devices_their_flags`` gives each device its own thread
(``--xla_cpu_multi_thread_eigen=false``) and a collective 10 minutes, unless the flags
already say otherwise.
"""
from __future__ import annotations

import importlib.metadata
import os
import re

FORCED_DEVICES = re.compile(r"--xla_force_host_platform_device_count=(\d+)")
FORCED_DEVICE_FLAGS = {"--xla_cpu_multi_thread_eigen": "false",
                       "--xla_cpu_collective_call_terminate_timeout_seconds": "600"}
ACCELERATOR_PLUGINS = re.compile(r"^(jax[-_](cuda|rocm)\d*[-_](plugin|pjrt)|libtpu)",
                                 re.IGNORECASE)


def backend_is_cpu(environ: dict[str, str] | None = None) -> bool:
    """Whether JAX will run on the CPU, without starting it: ``JAX_PLATFORMS`` where it is
    set (its first platform), else whether no accelerator's plugin is installed."""
    environ = os.environ if environ is None else environ
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(ACCELERATOR_PLUGINS.match(dist.metadata["Name"] or "")
                   for dist in importlib.metadata.distributions())


def forced_device_flags(xla_flags: str) -> str:
    """``xla_flags`` with ``FORCED_DEVICE_FLAGS`` added where it forces more than one host
    device and does not set them itself."""
    forced = FORCED_DEVICES.search(xla_flags)
    if not forced or int(forced.group(1)) < 2:
        return xla_flags
    added = [f"{flag}={value}" for flag, value in FORCED_DEVICE_FLAGS.items()
             if f"{flag}=" not in xla_flags]
    return " ".join([xla_flags.strip(), *added])


def give_forced_devices_their_flags() -> None:
    """Sets ``XLA_FLAGS`` by ``forced_device_flags`` (before XLA's CPU backend starts)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if forced_device_flags(flags) != flags:
        os.environ["XLA_FLAGS"] = forced_device_flags(flags)
