"""What the model needs to know about each dataset, without importing TensorFlow."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    tfds_name: str
    image_shape: tuple[int, int, int]  # what the model sees after preprocessing
    num_classes: int
    train_split: str
    test_split: str


DATASETS = {
    "fashion_mnist": DatasetInfo("fashion_mnist", (28, 28, 1), 10, "train", "test"),
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 10, "train", "test"),
    "imagenet2012": DatasetInfo("imagenet2012", (224, 224, 3), 1000, "train", "validation"),
}


def info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; valid datasets are: {', '.join(DATASETS)}.")
    return DATASETS[name]
