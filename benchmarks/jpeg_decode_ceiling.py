"""How fast this host could feed from a prepared JPEG store if the pipeline cost nothing.

    python -m benchmarks.jpeg_decode_ceiling STORE_DIR     # e.g. data/prepared/<name>/1.0.0

Images/s per core, from the store's training records, of three bare tf.data pipelines: the
decode with a 224 crop from bytes in memory; the same after reading and parsing each
record; and reading, then parsing and decoding a batch at a time.  The reading, parsing and
decoding are the training pipeline's own (``store.split_records``, ``store.parse_batch``,
``preprocess.imagenet.crop_store_image``).  Beside ``python -m alexnet_jax.benchmark
--input`` (the training pipeline itself) it says how much of the host's time goes to
decoding and how much to the pipeline around it; ``docs/performance.md`` has a run.
"""
import os
import sys
import time

import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.input_pipeline import store
from alexnet_jax.input_pipeline.preprocess.imagenet import CROP, crop_store_image

BATCH, STEPS = 64, 25
OFFSET = tf.constant([16, 16])


def decode(image_bytes):
    return crop_store_image(image_bytes, OFFSET)


def parsed_images(records):
    return store.parse_batch(records, "jpeg")[0]


def per_core_rate(ds) -> float:
    options = tf.data.Options()
    options.autotune.enabled = False  # as the training pipeline runs
    iterator = iter(ds.prefetch(2).with_options(options))
    next(iterator)
    start = time.perf_counter()
    for _ in range(STEPS):
        next(iterator)
    return STEPS * BATCH / (time.perf_counter() - start) / (os.cpu_count() or 1)


def main(store_dir: str) -> None:
    records = store.split_records(tfds.builder_from_directory(store_dir), "train")
    images = [image for batch in records.take(2048).batch(BATCH).map(parsed_images)
              for image in batch.numpy()]
    parallel = tf.data.AUTOTUNE
    pipelines = {
        "decode and crop, bytes in memory":
            tf.data.Dataset.from_tensor_slices(images).repeat().map(
                decode, num_parallel_calls=parallel).batch(BATCH),
        "read, parse and decode per example":
            records.repeat().map(lambda r: decode(parsed_images(r[None])[0]),
                                 num_parallel_calls=parallel).batch(BATCH),
        "read, then parse and decode per batch":
            records.repeat().batch(BATCH).map(lambda rs: tf.map_fn(
                decode, parsed_images(rs), fn_output_signature=tf.TensorSpec(
                    [CROP, CROP, 3], tf.uint8), parallel_iterations=8),
                num_parallel_calls=parallel),
    }
    for name, ds in pipelines.items():
        print(f"{name}: {per_core_rate(ds):.0f} images/s per core", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
