"""Random choices shared by the dataset families, as stateless tf ops."""
from __future__ import annotations

from alexnet_jax.input_pipeline.tf_runtime import tf


def example_seeds(seed: int, epoch, index, count: int):
    """``count`` stateless seeds for one example: a function of (run seed, epoch, index)."""
    base = tf().cast(epoch, tf().int64) * (1 << 32) + tf().cast(index, tf().int64) * count
    return [tf().stack([tf().constant(seed, tf().int64), base + i]) for i in range(count)]


def random_flip(image, seed):
    """The image or its mirror image, by ``seed``."""
    return tf().image.stateless_random_flip_left_right(image, seed=seed)
