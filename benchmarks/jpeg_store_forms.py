"""What the JPEG store's form costs in fidelity and buys in decode speed.

    python -m benchmarks.jpeg_store_forms [SOURCE_FOLDER]   # default: 512 generated JPEGs

The central 256x256 squares of the source JPEGs (``store.square_uint8``, as ``prepare``
makes them) encoded at qualities 95 and 90, with and without 4:2:0 chroma subsampling, and
decoded with the exact inverse DCT (the training pipeline's ``crop_store_image``) or the fast
one: per form, the mean size, the mean and largest absolute error against the exact square
(in 1/255), and the rate of decoding the 224 crop from bytes in memory, images/s per core,
in alternating rounds.  ``docs/performance.md`` has a run; without a folder it uses
``benchmark --input``'s generated images (per-pixel noise in every channel: a worst case for
chroma subsampling and the entropy coder).
"""
import glob
import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

from alexnet_jax.benchmark import write_jpegs
from alexnet_jax.input_pipeline.preprocess.imagenet import CROP, crop_store_image
from alexnet_jax.input_pipeline.store import square_uint8
from benchmarks.jpeg_decode_ceiling import BATCH, OFFSET, per_core_rate

IMAGES, ROUNDS = 512, 3
# name: (quality, chroma subsampled, inverse DCT)
FORMS = {"q95 4:4:4 (the default)": (95, False, "INTEGER_ACCURATE"),
         "q95 4:4:4, fast IDCT": (95, False, "INTEGER_FAST"),
         "q95 4:2:0": (95, True, "INTEGER_ACCURATE"),
         "q90 4:4:4": (90, False, "INTEGER_ACCURATE"),
         "q90 4:2:0": (90, True, "INTEGER_ACCURATE")}


def decoder(dct_method: str):
    if dct_method == "INTEGER_ACCURATE":
        return lambda image: crop_store_image(image, OFFSET)
    window = tf.stack([OFFSET[0], OFFSET[1], CROP, CROP])
    return lambda image: tf.image.decode_and_crop_jpeg(image, window, channels=3,
                                                       dct_method=dct_method)


def main(folder: str) -> None:
    files = sorted(glob.glob(os.path.join(folder, "**", "*.jp*g"), recursive=True))[:IMAGES]
    squares = [square_uint8(tf.io.read_file(path)) for path in files]
    encoded = {name: [tf.io.encode_jpeg(square, quality=quality, chroma_downsampling=chroma)
                      .numpy() for square in squares]
               for name, (quality, chroma, _) in FORMS.items()}
    for name, (_, _, dct_method) in FORMS.items():
        errors = [np.abs(tf.io.decode_jpeg(image, dct_method=dct_method).numpy().astype(float)
                         - square.numpy()) for image, square in zip(encoded[name], squares)]
        print(f"{name}: {np.mean([len(b) for b in encoded[name]]) / 1e3:.1f} KB, error mean "
              f"{np.mean([e.mean() for e in errors]):.2f} max {max(e.max() for e in errors):.0f}")
    for round_ in range(1, ROUNDS + 1):
        rates = {name: per_core_rate(tf.data.Dataset.from_tensor_slices(encoded[name]).repeat()
                                     .map(decoder(dct_method),
                                          num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH))
                 for name, (_, _, dct_method) in FORMS.items()}
        print(f"round {round_}: " + ", ".join(f"{name} {rate:.0f}" for name, rate in rates.items())
              + " images/s per core", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as root:
            write_jpegs(root, IMAGES)
            main(root)
