"""Prepares the paper's 256x256 store of an ImageNet-style dataset, once, on every core.

    python -m alexnet_jax.prepare --config experiments/paper_imagenet.py \\
        [--config.data.store_format=raw] [--config.data.store_quality=95]

Writes ``DATA_DIR/prepared/<source>_256_<format>/`` (``input_pipeline/store.py``); a
preparation that is stopped resumes at its first missing shard, and on a prepared store
it prepares again each shard that is missing or truncated.  The first training run
of a config prepares its store itself when it is missing; this does it beforehand.
"""

if __name__ == "__main__":  # before JAX is imported: XLA reads its log level then
    from alexnet_jax.runtime import console
    console.hold_back_notices()

import sys

from absl import app
from ml_collections import config_flags

from alexnet_jax import input_pipeline
from alexnet_jax.input_pipeline import store
from alexnet_jax.runtime.errors import ConfigError, DatasetUnavailableError
from alexnet_jax.training import config_base

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    try:
        config_base.validate(config)
        if input_pipeline.info(config.data.dataset).family != "imagenet":
            raise ConfigError(
                f"config.data.dataset={config.data.dataset} needs no preparation beyond TFDS's: "
                "the 256x256 store is for ImageNet-style data (imagenet2012, image_folder).")
        if store.is_prepared(config.data):
            repaired = store.repair_shards(config.data)
            again = f"; {len(repaired)} missing or truncated shard(s) prepared again"
            print(f"{store.store_dir(config.data)} is prepared{again if repaired else ''}.")
            return
        result = store.prepare(config.data)
    except (ConfigError, DatasetUnavailableError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(2 if isinstance(error, ConfigError) else 1)
    print(f"{result['images']} images in {result['seconds']:.0f} s "
          f"({result['images_per_s']:.0f} images/s): {store.store_dir(config.data)}")


if __name__ == "__main__":
    app.run(main)
