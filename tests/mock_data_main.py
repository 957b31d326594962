"""`python -m alexnet_jax.main` with TFDS's mock data in place of the dataset: lets tests
run the real command line (multi-host flags included) in fresh processes."""
import tensorflow_datasets as tfds
from absl import app, flags

from alexnet_jax import main

if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    with tfds.testing.mock_data(num_examples=128):
        app.run(main.main)
