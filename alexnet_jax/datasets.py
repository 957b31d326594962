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
    # Any class-per-folder dataset (Imagenette, a subset of ImageNet...); the number of
    # classes is the number of folders (the pipeline's num_classes).
    "image_folder": DatasetInfo("image_folder", (224, 224, 3), 0, "train", "val"),
}


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")

# Per-channel mean and standard deviation of the training split's pixels in [0, 1]
# (Fashion-MNIST: computed here from the IDX files; CIFAR-10: the usual published values).
_NORMALIZATION = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "image_folder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return _NORMALIZATION[info(name).tfds_name]


def info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; valid datasets are: {', '.join(DATASETS)}.")
    return DATASETS[name]
