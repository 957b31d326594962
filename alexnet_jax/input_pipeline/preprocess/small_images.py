"""Fashion-MNIST and CIFAR-10: pad-and-crop and flips for training, nothing random in eval."""
from __future__ import annotations

from typing import Any

from alexnet_jax.input_pipeline import sources
from alexnet_jax.input_pipeline.preprocess.augment import example_seeds, random_flip
from alexnet_jax.input_pipeline.tf_runtime import tf


def normalize(image, mean, std):
    return (tf().cast(image, tf().float32) / 255.0 - mean) / std


def random_crop_with_padding(image, padding: int, seed):
    """Zero-pads each side by ``padding`` and crops back to the original size."""
    if padding <= 0:
        return image
    height, width = image.shape[0], image.shape[1]
    padded = tf().pad(image, [[padding, padding], [padding, padding], [0, 0]])
    return tf().image.stateless_random_crop(padded, [height, width, image.shape[2]], seed=seed)


class SmallImagePreprocessing:
    """Per-channel normalisation; for training, a random crop of the zero-padded image
    (``data.random_crop_padding``) and random mirror images (``data.flip``).

    Training batches come through ``train_batch``, a call per batch: per example, tf.data's
    map costs several times the work itself, CPU that the training step shares on a small
    machine (docs/performance.md has the measurement)."""

    decoders = None  # TFDS decodes the small PNGs
    center_view = 0

    def __init__(self, config: Any):
        self.data = config.data
        self.seed = config.seed
        self.mean, self.std = sources.normalization(config.data.dataset)

    def train(self, image, epoch, index):
        return normalize(self._augment(image, epoch, index), self.mean, self.std)

    def train_batch(self, examples, epoch, index):
        """``train`` over a batch of (image, label) examples, labels included: the same
        numbers, the crops and flips per example (by ``index``), the rest batched."""
        images, labels = examples
        if self.data.random_crop_padding > 0 or self.data.flip:
            images = tf().map_fn(lambda args: self._augment(args[0], epoch, args[1]),
                                 (images, index), fn_output_signature=images.dtype)
        return {"image": normalize(images, self.mean, self.std), "label": labels}

    def _augment(self, image, epoch, index):
        crop_seed, flip_seed = example_seeds(self.seed, epoch, index, 2)
        image = random_crop_with_padding(image, self.data.random_crop_padding, crop_seed)
        if self.data.flip:
            image = random_flip(image, flip_seed)
        return image

    def eval(self, image):
        return normalize(image, self.mean, self.std)
