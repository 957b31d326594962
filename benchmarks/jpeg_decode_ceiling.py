"""How fast this host could feed from a prepared JPEG store if the pipeline cost nothing.

    python -m benchmarks.jpeg_decode_ceiling STORE_DIR     # e.g. data/prepared/<name>/1.0.0

Images/s per core, from the store's training records, of three bare tf.data pipelines: the
decode with the random 224 crop from bytes in memory; the same after reading and parsing
each record; and reading, then parsing and decoding a batch at a time.  Beside
``python -m alexnet_jax.benchmark --input`` (the training pipeline itself) it says how much
of the host's time goes to decoding and how much to the pipeline around it;
``docs/performance.md`` has a run.
"""
import glob
import os
import sys
import time

import tensorflow as tf

BATCH, STEPS = 64, 25
FEATURES = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}
WINDOW = tf.constant([16, 16, 224, 224])


def decode(image_bytes):
    return tf.image.decode_and_crop_jpeg(image_bytes, WINDOW, channels=3,
                                         dct_method="INTEGER_ACCURATE")


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
    files = sorted(glob.glob(os.path.join(store_dir, "*train.tfrecord*")))
    if not files:
        raise SystemExit(f"No training records (*train.tfrecord*) in {store_dir}.")
    records = tf.data.TFRecordDataset(files)
    images = [tf.io.parse_single_example(r, FEATURES)["image"].numpy()
              for r in records.take(2048)]
    parallel = tf.data.AUTOTUNE
    pipelines = {
        "decode and crop, bytes in memory":
            tf.data.Dataset.from_tensor_slices(images).repeat().map(
                decode, num_parallel_calls=parallel).batch(BATCH),
        "read, parse and decode per example":
            records.repeat().map(lambda r: decode(tf.io.parse_single_example(r, FEATURES)["image"]),
                                 num_parallel_calls=parallel).batch(BATCH),
        "read, then parse and decode per batch":
            records.repeat().batch(BATCH).map(lambda rs: tf.map_fn(
                decode, tf.io.parse_example(rs, FEATURES)["image"],
                fn_output_signature=tf.TensorSpec([224, 224, 3], tf.uint8),
                parallel_iterations=8), num_parallel_calls=parallel),
    }
    for name, ds in pipelines.items():
        print(f"{name}: {per_core_rate(ds):.0f} images/s per core", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
