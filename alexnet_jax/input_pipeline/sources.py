"""Where the data comes from: each dataset's facts, and its prepared TFDS builder.

* Fashion-MNIST from its four IDX files (Debian's ``dataset-fashion-mnist``, fetched by
  ``make data``), prepared as a TFDS dataset by a builder of our own;
* CIFAR-10 through TFDS (prepared, or downloaded where the machine is online);
* ImageNet (``imagenet2012``) through TFDS from the ILSVRC2012 tar files (manual download);
* any class-per-folder dataset through TFDS's ``ImageFolder``.

``info(name)`` needs no TensorFlow: the model and the summary read image shapes and
class counts from it.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import shutil
import zlib
from typing import Any

import numpy as np

from alexnet_jax.input_pipeline.tf_runtime import tf
from alexnet_jax.runtime.errors import DatasetUnavailableError  # noqa: F401 (raised here)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    tfds_name: str
    image_shape: tuple[int, int, int]  # what the model sees after preprocessing
    num_classes: int
    train_split: str
    test_split: str
    family: str  # the preprocessing: "small_images" or "imagenet"
    sizes: tuple[int, int] = (0, 0)  # the published (train, test) example counts; 0: unknown


DATASETS = {
    "fashion_mnist": DatasetInfo("fashion_mnist", (28, 28, 1), 10, "train", "test",
                                 "small_images", (60_000, 10_000)),
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 10, "train", "test", "small_images",
                           (50_000, 10_000)),
    "imagenet2012": DatasetInfo("imagenet2012", (224, 224, 3), 1000, "train", "validation",
                                "imagenet", (1_281_167, 50_000)),
    # Any class-per-folder dataset (Imagenette, a subset of ImageNet...); the number of
    # classes is the number of folders (the pipeline's num_classes).
    "image_folder": DatasetInfo("image_folder", (224, 224, 3), 0, "train", "val", "imagenet"),
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


def info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; valid datasets are: {', '.join(DATASETS)}.")
    return DATASETS[name]


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return _NORMALIZATION[info(name).tfds_name]


# --- Fashion-MNIST from its IDX files --------------------------------------------------

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FETCH_FASHION_MNIST = (
    "`make data` (or by hand: apt-get download dataset-fashion-mnist && "
    "dpkg-deb -x dataset-fashion-mnist_*.deb /tmp/fm && mkdir -p {raw} && "
    "cp /tmp/fm/usr/share/datasets/fashion-mnist/*.gz {raw}/)")
FASHION_MNIST_SIZES = dict(zip(("train", "test"), DATASETS["fashion_mnist"].sizes))


def read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped: big-endian dims, then uint8 data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def check_fashion_mnist_files(raw: str) -> None:
    """Reads the four IDX files through, before anything is prepared from them: a truncated
    or damaged one is named, with how to fetch it again."""
    for split, names in FASHION_MNIST_FILES.items():
        counts = []
        for name in names:
            path = os.path.join(raw, name)
            try:
                counts.append(len(read_idx(path)))
            except (OSError, EOFError, ValueError, IndexError, zlib.error) as error:
                raise DatasetUnavailableError(
                    f"{path} is truncated or damaged ({type(error).__name__}: {error}). Fetch "
                    f"it again: delete {raw} and run " + FETCH_FASHION_MNIST.format(raw=raw) +
                    ".") from None
        if counts != [FASHION_MNIST_SIZES[split]] * 2:
            raise DatasetUnavailableError(
                f"{raw}: the {split} images and labels hold {counts[0]} and {counts[1]} "
                f"examples, not {FASHION_MNIST_SIZES[split]}. Fetch them again: delete {raw} "
                "and run " + FETCH_FASHION_MNIST.format(raw=raw) + ".")


def remove_half_prepared(builder: Any) -> list[str]:
    """Removes what a killed preparation left (TFDS prepares into a temporary directory
    beside the dataset's and renames it when complete); returns the names removed."""
    from tensorflow_datasets.core import constants
    parent = os.path.dirname(os.path.normpath(builder.data_dir))
    removed = []
    for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
        if name.startswith(constants.INCOMPLETE_PREFIX):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            removed.append(os.path.join(parent, name))
    return removed


@functools.cache  # TFDS registers a builder class by name, once
def _fashion_mnist_builder_class():
    import tensorflow_datasets as tfds

    class FashionMnistIdx(tfds.core.GeneratorBasedBuilder):
        """Fashion-MNIST prepared from its four IDX files in a local directory.

        Debian's ``dataset-fashion-mnist`` holds the same data as TFDS's own
        ``fashion_mnist`` download, in gzip files with other headers, so TFDS's
        checksums reject them; this builder reads them as TFDS's manual data instead.
        """

        VERSION = tfds.core.Version("1.0.0")
        MANUAL_DOWNLOAD_INSTRUCTIONS = "Place the four Fashion-MNIST IDX .gz files in manual_dir."

        def _info(self):
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(28, 28, 1)),
                    "label": tfds.features.ClassLabel(names=FASHION_MNIST_CLASSES),
                }),
                supervised_keys=("image", "label"),
                homepage="https://github.com/zalandoresearch/fashion-mnist")

        def _split_generators(self, dl_manager):
            manual = dl_manager.manual_dir
            return {split: self._generate_examples(os.path.join(manual, images),
                                                   os.path.join(manual, labels))
                    for split, (images, labels) in FASHION_MNIST_FILES.items()}

        def _generate_examples(self, images_path, labels_path):
            images, labels = read_idx(images_path), read_idx(labels_path)
            for index, (image, label) in enumerate(zip(images, labels)):
                yield index, {"image": image[..., None], "label": int(label)}

    return FashionMnistIdx


# --- prepared builders ---------------------------------------------------------------

def load_builder(data: Any, allow_download: bool | None = None):
    """A prepared TFDS builder for ``config.data``, preparing it first where it can:
    from local files, else (``data.download``) through TFDS's own download."""
    import tensorflow_datasets as tfds
    tf()
    if allow_download is None:
        allow_download = data.download
    tfds_dir = os.path.join(data.data_dir, "tfds")
    if data.dataset == "fashion_mnist":
        return _fashion_mnist_builder(data.data_dir, tfds_dir, allow_download)
    if data.dataset == "image_folder":
        return _image_folder_builder(data.image_folder)
    builder = tfds.builder(info(data.dataset).tfds_name, data_dir=tfds_dir)
    if builder.is_prepared():
        return builder
    if data.dataset == "imagenet2012":
        return _prepare_imagenet(builder, tfds_dir)
    return _download_or_explain(info(data.dataset).tfds_name, tfds_dir, allow_download,
                                f"{data.dataset} is not prepared under {tfds_dir}.")


def _fashion_mnist_builder(data_dir: str, tfds_dir: str, allow_download: bool):
    import tensorflow_datasets as tfds
    raw = os.path.join(data_dir, "fashion-mnist")
    builder = _fashion_mnist_builder_class()(data_dir=tfds_dir)
    if builder.is_prepared():
        return builder
    if all(os.path.exists(os.path.join(raw, f))
           for pair in FASHION_MNIST_FILES.values() for f in pair):
        check_fashion_mnist_files(raw)
        for path in remove_half_prepared(builder):
            print(f"Removed {path}, left by a preparation that was stopped.")
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=raw))
        return builder
    return _download_or_explain("fashion_mnist", tfds_dir, allow_download,
                                f"Fashion-MNIST files not found in {raw}. Fetch them with "
                                + FETCH_FASHION_MNIST.format(raw=raw) + ".")


def _image_folder_builder(root: str):
    import tensorflow_datasets as tfds
    if not root or not os.path.isdir(os.path.join(root, "train")):
        raise DatasetUnavailableError(
            f"data.image_folder={root!r} has no train/ directory. Give a directory with "
            "train/<class>/<image> and val/<class>/<image> (Imagenette's layout, renamed "
            "to val/ where it says validation/).")
    return tfds.folder_dataset.ImageFolder(root)


IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def _prepare_imagenet(builder: Any, tfds_dir: str):
    import tensorflow_datasets as tfds
    manual = os.path.join(tfds_dir, "downloads", "manual")
    try:  # prepares from the tar files (once: hours, ~150 GB), or fails saying which are missing
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual))
    except Exception as error:
        raise DatasetUnavailableError(
            f"ImageNet is not prepared under {tfds_dir}, and TFDS could not prepare it "
            f"({type(error).__name__}: {str(error).strip().splitlines()[0][:200]}). Download "
            f"{' and '.join(IMAGENET_TARS)} from https://image-net.org (an account is needed), "
            f"place them in {manual}/ and run again; see README 'Training on ImageNet'."
        ) from None
    return builder


def _download_or_explain(name: str, tfds_dir: str, allow_download: bool, explanation: str):
    import tensorflow_datasets as tfds
    if not allow_download:
        raise DatasetUnavailableError(explanation + " (TFDS download disabled: "
                                      "config.data.download=False.)")
    builder = tfds.builder(name, data_dir=tfds_dir)
    try:
        builder.download_and_prepare()
    except Exception as error:  # offline, or the download failed: say how to get the data
        raise DatasetUnavailableError(
            f"{explanation} TFDS's own download of {name!r} failed too ({type(error).__name__}: "
            f"{str(error)[:200]}). Prepare it on a machine with internet access "
            f"(python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
            f"data_dir='{tfds_dir}').download_and_prepare()\") and copy {tfds_dir} here."
        ) from error
    return builder
