"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012) in JAX and Flax.

The commands sit at this level (``python -m alexnet_jax.main | sweep | summary | prepare |
figures | benchmark | data_service``); the rest lives in packages named for their role,
each importing only those after it:

* ``tools/`` and ``sweep/``: the layer table, profiles and timing; sweeps of runs;
* ``training/``: the config, the steps, the loop, evaluation, optimisers and metrics;
* ``model/``: the network, its components and layers, the CPU extra, device layouts;
  ``input_pipeline/``: the data;
* ``runtime/``: checkpoints, the workdir's files and lock, signals, the supervisor of a
  multi-host process, errors.
"""


def prepare_process() -> None:
    """What a command does first, before JAX starts: hold back the backends' notices unless
    ``--verbose`` (``runtime/console.py``), end with the process that started it where
    that asked (``runtime/process.py``), then the CPU extra's process settings
    (``model/cpu/``: forced host devices' flags, malloc that keeps what it frees), where
    the extra is installed and the backend will be the CPU."""
    from alexnet_jax.runtime import console, process
    console.hold_back_notices()
    process.die_with_parent()
    try:
        from alexnet_jax.model.cpu import prepare_process as prepare_cpu
    except ModuleNotFoundError as error:  # the CPU extra was removed: nothing to prepare
        if not (error.name or "").startswith("alexnet_jax.model.cpu"):
            raise
        return
    prepare_cpu()
