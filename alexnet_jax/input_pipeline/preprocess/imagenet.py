"""ImageNet as the paper preprocessed it, as small tf.data ops (Sections 2 and 4.1).

Images are read still encoded (``SkipDecoding``) so that a JPEG's discarded borders are
never decoded.

* ``decode_and_center_crop`` (``decode.py``): the shorter side to 256 and the central
  256x256 patch, decoding only that square of a JPEG (``tf.image.decode_and_crop_jpeg``);
* ``random_crop`` and ``random_flip``: a random 224x224 patch and its mirror image;
* ``pca_lighting``: adds sum_i alpha_i lambda_i p_i to every pixel, with p_i, lambda_i
  the eigenvectors and eigenvalues of ImageNet's RGB covariance and alpha_i ~ N(0, 0.1)
  drawn once per image;
* ``subtract_mean``: the per-pixel mean image (the paper) or the per-channel mean;
* ``ten_crops``: the four corner patches and the centre patch, and their mirror images,
  for the paper's 10-patch evaluation.

Random ops take a stateless seed, so that an image's augmentation is a function of
(run seed, epoch, position) and a resumed run sees the same batches.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from alexnet_jax.input_pipeline import sources, store
from alexnet_jax.input_pipeline.preprocess.augment import example_seeds, random_flip
from alexnet_jax.input_pipeline.preprocess.decode import ACCURATE_IDCT, decode_and_center_crop  # noqa: F401
from alexnet_jax.input_pipeline.preprocess.paper import (  # noqa: F401 (re-exported)
    CENTER_VIEW,
    CROP,
    PCA_ALPHA_STD,
    PCA_EIGENVALUES,
    PCA_EIGENVECTORS,
    RESIZE,
    TEN_CROP_NAMES,
    corners,
)
from alexnet_jax.input_pipeline.tf_runtime import tf as _tf


def random_crop(image, size: int, seed):
    tf = _tf()
    return tf.image.stateless_random_crop(image, [size, size, image.shape[-1]], seed=seed)


def pca_lighting(image, seed, alpha_std: float = PCA_ALPHA_STD):
    """The paper's colour augmentation: one RGB offset per image, along ImageNet's
    principal components, scaled by their eigenvalues and a N(0, alpha_std) draw each."""
    return lighting(image, _tf().random.stateless_normal([3], seed=seed, stddev=alpha_std))


def lighting(image, alpha):
    """``image`` plus sum_i alpha_i lambda_i p_i (ImageNet's eigenvalues and eigenvectors)."""
    tf = _tf()
    return image + tf.linalg.matvec(tf.constant(PCA_EIGENVECTORS),
                                    alpha * tf.constant(PCA_EIGENVALUES))


def subtract_mean(image, mean: np.ndarray):
    """``mean``: a mean image of the same size (the paper's), or one value per channel."""
    return image - _tf().constant(mean, _tf().float32)


def center_crop(image, size: int = CROP):
    height, width = image.shape[0], image.shape[1]
    top, left = (height - size) // 2, (width - size) // 2
    return image[top:top + size, left:left + size]


def ten_crops(image, size: int = CROP):
    """(10, size, size, C): the patches named in ``TEN_CROP_NAMES``, in that order."""
    tf = _tf()
    patches = [image[y:y + size, x:x + size] for y, x in corners(image.shape[0], size)]
    return tf.stack(patches + [tf.image.flip_left_right(p) for p in patches])


# --- the paper's preprocessing ----------------------------------------------------------

def mean_path(data: Any, builder: Any) -> str:
    name = builder.info.name if data.dataset != "image_folder" else \
        "image_folder_" + os.path.basename(os.path.normpath(data.image_folder))
    return os.path.join(data.data_dir, f"{name}_mean_{RESIZE}_{data.mean_images}.npy")


def compute_mean_image(builder: Any, split: str, count: int,
                       decode: Any = decode_and_center_crop, decoders: Any = "skip") -> np.ndarray:
    """The mean 256x256 RGB image of the first ``count`` training images, in [0, 1];
    ``decode`` makes each one's 256x256 square from what TFDS reads (``decoders``)."""
    import tensorflow_datasets as tfds
    tf = _tf()
    if decoders == "skip":
        decoders = {"image": tfds.decode.SkipDecoding()}
    # try_autocache off: TFDS would cache a small dataset whole, under our take(count), and
    # tf.data warns when it throws that unfinished cache away.
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                            read_config=tfds.ReadConfig(try_autocache=False))
    # An image that cannot be decoded is left out; each is decoded in a dataset of its own,
    # so that an error in reading the files (a damaged one) comes through instead of being
    # skipped over and over at the same place.
    ds = ds.take(count).interleave(
        lambda ex: tf.data.Dataset.from_tensors(ex["image"]).map(decode).ignore_errors(),
        cycle_length=16, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    total, seen = np.zeros((RESIZE, RESIZE, 3), np.float64), 0
    for batch in ds.batch(256).as_numpy_iterator():
        total += batch.sum(0)
        seen += len(batch)
    return (total / max(seen, 1)).astype(np.float32)


def load_mean(data: Any, builder: Any, split: str, path: str | None = None,
              **compute: Any) -> np.ndarray:
    """The per-pixel mean image (computed once, then read from ``path``, by default in the
    data directory), or its per-channel mean (``data.mean=channel``)."""
    path = path or mean_path(data, builder)
    if os.path.exists(path):
        mean = np.load(path)
    else:
        print(f"Computing the mean image of {data.mean_images} training images into {path} "
              "(once).")
        mean = compute_mean_image(builder, split, data.mean_images, **compute)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        np.save(path + ".tmp.npy", mean)
        os.replace(path + ".tmp.npy", path)
    if data.mean == "channel":
        return mean.mean((0, 1))
    if data.mean != "pixel":
        raise ValueError(f"data.mean must be 'pixel' or 'channel'; got {data.mean!r}.")
    return mean


class PaperPreprocessing:
    """Training: decode, 256 centre square, mean subtracted, random 224 crop, flip, PCA
    lighting.  Evaluation: the centre 224 crop, or (``data.ten_crop``) the 10 patches
    with the centre one at ``CENTER_VIEW``."""

    center_view = CENTER_VIEW
    decodes_source_images = True  # any of them may be corrupt

    def __init__(self, config: Any, builder: Any):
        import tensorflow_datasets as tfds
        self.data = config.data
        self.seed = config.seed
        self.decoders = {"image": tfds.decode.SkipDecoding()}
        self.mean = load_mean(config.data, builder, sources.info(config.data.dataset).train_split)

    def train(self, image_bytes, epoch, index):
        crop_seed, flip_seed, light_seed = example_seeds(self.seed, epoch, index, 3)
        image = subtract_mean(decode_and_center_crop(image_bytes), self.mean)
        image = random_flip(random_crop(image, CROP, crop_seed), flip_seed)
        if self.data.pca_lighting:
            image = pca_lighting(image, light_seed)
        return image

    def eval(self, image_bytes):
        image = subtract_mean(decode_and_center_crop(image_bytes), self.mean)
        return ten_crops(image) if self.data.ten_crop else center_crop(image)


# --- the prepared 256x256 store: the host's part -------------------------------------

def decode_store_image(image):
    """A stored 256x256 image (JPEG bytes, or raw uint8) as uint8."""
    tf = _tf()
    if image.dtype == tf.string:
        return tf.reshape(tf.io.decode_jpeg(image, channels=3, dct_method=ACCURATE_IDCT),
                          [RESIZE, RESIZE, 3])
    return image


def crop_store_image(image, offset):
    """The 224x224 patch at ``offset`` (y, x) of a stored image, as uint8; from JPEG bytes
    only that patch is decoded (``decode_and_crop_jpeg``)."""
    tf = _tf()
    if image.dtype == tf.string:
        window = tf.stack([offset[0], offset[1], CROP, CROP])
        return tf.reshape(tf.image.decode_and_crop_jpeg(image, window, channels=3,
                                                        dct_method=ACCURATE_IDCT),
                          [CROP, CROP, 3])
    return image[offset[0]:offset[0] + CROP, offset[1]:offset[1] + CROP]


def random_offset(seed):
    """A uniform random (y, x) corner of a 224 patch in a 256 image."""
    tf = _tf()
    return tf.random.stateless_uniform([2], seed=seed, maxval=RESIZE - CROP + 1, dtype=tf.int32)


class StorePreprocessing:
    """The paper's preprocessing of the prepared 256x256 store, split between the host and
    the device.  The host decodes (fused with the random 224 crop for training) and sends
    uint8; the jitted step subtracts the mean, flips and adds the colour noise
    (``on_device.PaperAugmentation``), its draws a function of each example's index."""

    center_view = CENTER_VIEW

    def __init__(self, config: Any, builder: Any, store_directory: str):
        import tensorflow_datasets as tfds

        from alexnet_jax.input_pipeline.preprocess.on_device import PaperAugmentation
        self.data, self.seed, self.builder = config.data, config.seed, builder
        jpeg = config.data.store_format != "raw"
        self.decoders = {"image": tfds.decode.SkipDecoding()} if jpeg else None
        mean = load_mean(config.data, builder, sources.info(config.data.dataset).train_split,
                         path=os.path.join(store_directory, f"mean_{config.data.mean_images}.npy"),
                         decode=lambda image: _tf().cast(decode_store_image(image),
                                                         _tf().float32) / 255.0,
                         decoders=self.decoders)
        self.device = PaperAugmentation(mean=mean, pca_lighting=config.data.pca_lighting,
                                        ten_crop=config.data.ten_crop, seed=config.seed)

    def train(self, image, epoch, index):
        (crop_seed,) = example_seeds(self.seed, epoch, index, 1)
        offset = random_offset(crop_seed)
        return {"image": crop_store_image(image, offset), "offset": offset}

    # Training reads the store's records itself and parses a batch per call: TFDS's
    # per-example reading cost more host time than the decoding (docs/performance.md).

    def records(self, split: str):
        """``split``'s serialized examples, in TFDS's order."""
        return store.split_records(self.builder, split)

    def train_batch(self, records, epoch, index):
        """``train`` over a batch of serialized examples, with their labels; ``index``: the
        examples' global indices."""
        tf = _tf()
        images, labels = store.parse_batch(records, self.data.store_format)
        crops = tf.map_fn(lambda example: self.train(example[0], epoch, example[1]),
                          (images, index), parallel_iterations=16, fn_output_signature={
                              "image": tf.TensorSpec([CROP, CROP, 3], tf.uint8),
                              "offset": tf.TensorSpec([2], tf.int32)})
        return {**crops, "label": labels}

    def eval(self, image):
        return decode_store_image(image)
