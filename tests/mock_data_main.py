"""`python -m alexnet_jax.main` with TFDS's mock data in place of the dataset: lets tests
run the real command line (multi-host flags included) in fresh processes, prepared as the
entry point prepares itself (alexnet_jax/runtime/process.py)."""
from alexnet_jax import prepare_process

prepare_process()  # before JAX starts, as `python -m alexnet_jax.main` does

import tensorflow_datasets as tfds  # noqa: E402
from absl import app  # noqa: E402

from alexnet_jax import main  # noqa: E402

if __name__ == "__main__":
    with tfds.testing.mock_data(num_examples=128):
        app.run(main.main, flags_parser=main.parse_flags)
