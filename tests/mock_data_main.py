"""`python -m alexnet_jax.main` with TFDS's mock data in place of the dataset: lets tests
run the real command line (multi-host flags included) in fresh processes."""
import tensorflow_datasets as tfds
from absl import app

from alexnet_jax import main

if __name__ == "__main__":
    with tfds.testing.mock_data(num_examples=128):
        app.run(main.main, flags_parser=main.parse_flags)
