"""Trains an experiment config.

    python -m alexnet_jax.main --config experiments/fashion_mnist.py --workdir runs/fm \\
        [--config.model.norm=batchnorm ...]

Running it again on the same workdir resumes from the latest checkpoint.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from alexnet_jax import checkpoints, input_pipeline, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summary.")


def main(argv):
    logging.set_verbosity(logging.WARNING)  # orbax narrates every save at INFO
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except train.TrainingInterrupted as stop:
        print(stop)
        raise SystemExit(0) from None
    except (input_pipeline.DatasetUnavailableError, checkpoints.CheckpointError,
            FloatingPointError, PermissionError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
