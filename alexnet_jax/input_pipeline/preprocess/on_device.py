"""The paper's augmentation on the accelerator, inside the jitted training step.

The host sends uint8 224x224 crops of the stored 256x256 images (4x fewer bytes than
float32), each with its crop's corner (``offset``) and its global example index
(``index``: epoch x training examples + position in the epoch).  Here, per example:
the mean image's patch at that corner is subtracted, the image is mirrored or not, and
the PCA colour noise is added, the flip and the noise drawn from
``fold_in(key, index)``: the same draws in every layout, for every process count, and
after a resume.  Evaluation gets whole 256x256 images and cuts the paper's 10 patches
(or the centre one) here.

The arithmetic is the host's (``preprocess/imagenet.py``): tested equal for the same draws.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.input_pipeline.preprocess.paper import (
    CROP,
    PCA_ALPHA_STD,
    PCA_EIGENVALUES,
    PCA_EIGENVECTORS,
    RESIZE,
    corners,
)

AUGMENTATION_STREAM = 0x61756731  # folded into the run's seed: a key of its own


@dataclasses.dataclass(frozen=True, eq=False)
class PaperAugmentation:
    """``train(batch)`` and ``eval(batch)``: images ready for the network, from the host's
    uint8 batches.  ``mean`` is the 256x256x3 mean image (or one value per channel)."""

    mean: np.ndarray
    pca_lighting: bool = True
    ten_crop: bool = True
    seed: int = 0

    def key(self) -> jax.Array:
        return jax.random.fold_in(jax.random.PRNGKey(self.seed), AUGMENTATION_STREAM)

    def draws(self, index: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Example ``index``'s flip (bool) and colour-noise alphas (3,)."""
        flip_key, light_key = jax.random.split(jax.random.fold_in(self.key(), index))
        return (jax.random.bernoulli(flip_key),
                PCA_ALPHA_STD * jax.random.normal(light_key, (3,), jnp.float32))

    def _mean_patch(self, offset: jax.Array) -> jax.Array:
        mean = jnp.asarray(self.mean, jnp.float32)
        if mean.ndim == 1:
            return mean
        return jax.lax.dynamic_slice(mean, (offset[0], offset[1], 0), (CROP, CROP, 3))

    def augment_one(self, image: jax.Array, offset: jax.Array, index: jax.Array) -> jax.Array:
        flip, alpha = self.draws(index)
        x = image.astype(jnp.float32) / 255.0 - self._mean_patch(offset)
        x = jnp.where(flip, x[:, ::-1], x)
        if self.pca_lighting:
            x = x + jnp.asarray(PCA_EIGENVECTORS) @ (alpha * jnp.asarray(PCA_EIGENVALUES))
        return x

    def train(self, batch: dict[str, jax.Array]) -> jax.Array:
        return jax.vmap(self.augment_one)(batch["image"], batch["offset"], batch["index"])

    def eval(self, batch: dict[str, jax.Array]) -> jax.Array:
        """(batch, 10, 224, 224, 3): the corners, the centre, and their mirror images (the
        order of ``preprocess.imagenet.TEN_CROP_NAMES``); or (batch, 224, 224, 3), the
        centre alone, without ``ten_crop``."""
        x = batch["image"].astype(jnp.float32) / 255.0 - jnp.asarray(self.mean, jnp.float32)
        if not self.ten_crop:
            y, c = corners(RESIZE, CROP)[-1]
            return x[:, y:y + CROP, c:c + CROP]
        patches = [x[:, y:y + CROP, c:c + CROP] for y, c in corners(RESIZE, CROP)]
        patches += [p[:, :, ::-1] for p in patches]
        return jnp.stack(patches, axis=1)

