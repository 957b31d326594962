"""Input: TFDS datasets read through tf.data, yielding NumPy batches.

* ``sources.py``: each dataset's facts (``info``, no TensorFlow needed) and its prepared
  TFDS builder (Fashion-MNIST from IDX files, CIFAR-10, ImageNet, image folders);
* ``preprocess/``: what happens to each image, per dataset family (small images, the
  paper's ImageNet preprocessing), including which evaluation view is the centre one;
* ``store.py``: the paper's 256x256 store of ImageNet-style data, prepared once;
* ``pipeline.py``: the ``Pipeline`` (shuffling, per-process rows, padded evaluation,
  corrupt images), the same for every dataset.

TensorFlow is imported on first use only (``tf_runtime.py``), and hidden from
accelerators, so that the model, the benchmark and their tests never need it.
"""
from __future__ import annotations

from typing import Any

from alexnet_jax.input_pipeline import pipeline, preprocess, sources, store
from alexnet_jax.input_pipeline.pipeline import Pipeline, pad_batch
from alexnet_jax.input_pipeline.sources import DatasetUnavailableError, info, load_builder

__all__ = ["DatasetUnavailableError", "Pipeline", "create_pipeline", "info", "load_builder",
           "pad_batch"]


def create_pipeline(config: Any, process_index: int = 0, process_count: int = 1) -> Pipeline:
    """The pipeline of ``config.data.dataset`` for this process: for ImageNet-style data, by
    default from the prepared 256x256 store (``store.py``; prepared first if missing)."""
    data = config.data
    import tensorflow_datasets as tfds  # its preparation bars follow the run's progress bar
    (tfds.enable_progress_bar if config.progress_bar else tfds.disable_progress_bar)()
    if sources.info(data.dataset).family == "imagenet" and data.store == "prepared":
        from alexnet_jax.input_pipeline.preprocess.imagenet import StorePreprocessing
        builder = store.open_store(data, progress=config.progress_bar)
        with store.damage_explained(store.store_dir(data)):  # the mean image, the sizes
            return Pipeline(config, StorePreprocessing(config, builder, store.store_dir(data)),
                            builder, sources.info(data.dataset), process_index, process_count)
    builder = load_builder(data)
    pipeline.check_splits(builder)
    return Pipeline(config, preprocess.for_dataset(config, builder), builder,
                    sources.info(data.dataset), process_index, process_count)
