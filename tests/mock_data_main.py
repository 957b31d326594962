"""`python -m alexnet_jax.main` with TFDS's mock data in place of the dataset: lets tests
run the real command line (multi-host flags included) in fresh processes, prepared as the
entry point prepares itself (alexnet_jax/__init__.py, prepare_process).

    python tests/mock_data_main.py --config experiments/fashion_mnist.py --workdir /tmp/mock \
        --config.model.variant=small --config.num_epochs=1
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo

from alexnet_jax import prepare_process  # noqa: E402

prepare_process()  # before JAX starts, as `python -m alexnet_jax.main` does

import tensorflow_datasets as tfds  # noqa: E402
from absl import app  # noqa: E402

from alexnet_jax import main  # noqa: E402

if __name__ == "__main__":
    with tfds.testing.mock_data(num_examples=128):
        app.run(main.main, flags_parser=main.parse_flags)
