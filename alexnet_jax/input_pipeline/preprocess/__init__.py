"""What happens to each image, per dataset family; ``Pipeline`` does the rest.

A preprocessing object has:

* ``decoders``: TFDS decoders for ``as_dataset`` (None: TFDS decodes the images);
* ``train(image, epoch, index)``: one training example, its randomness a function of
  (run seed, epoch, position in the epoch);
* ``eval(image)``: one test image, or several views of it stacked on a leading axis;
* ``center_view``: the index of the centre view among those views (0 for one view);
* optionally ``train_batch(examples, epoch, index)`` (``train`` over a batch of examples,
  labels included): then training examples come that way, a batch per call; with
  ``records(split)`` (the split's serialized examples) the batch is of those records (the
  prepared ImageNet store), else of (image, label) pairs (the small images).
"""
from __future__ import annotations

from typing import Any, Protocol

from alexnet_jax.input_pipeline import sources


class Preprocessing(Protocol):
    """The module docstring lists what each attribute does."""

    decoders: dict[str, Any] | None
    center_view: int

    def train(self, image: Any, epoch: Any, index: Any) -> Any: ...

    def eval(self, image: Any) -> Any: ...


def for_dataset(config: Any, builder: Any) -> Preprocessing:
    """The preprocessing of ``config.data.dataset``'s family."""
    family = sources.info(config.data.dataset).family
    if family == "small_images":
        from alexnet_jax.input_pipeline.preprocess.small_images import SmallImagePreprocessing
        return SmallImagePreprocessing(config)
    from alexnet_jax.input_pipeline.preprocess.imagenet import PaperPreprocessing
    return PaperPreprocessing(config, builder)
