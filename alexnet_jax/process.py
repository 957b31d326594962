"""What an entry point does first, before JAX starts: the CPU extra's process settings
(``cpu.prepare_process``: forced host devices' flags, malloc that keeps what it frees),
where the extra is installed and the backend will be the CPU."""
from __future__ import annotations


def prepare() -> None:
    try:
        from alexnet_jax.cpu import prepare_process
    except ModuleNotFoundError as error:  # the CPU extra was removed: nothing to prepare
        if not (error.name or "").startswith("alexnet_jax.cpu"):
            raise
        return
    prepare_process()
