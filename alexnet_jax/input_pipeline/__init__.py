"""Input pipelines: TFDS datasets read through tf.data, yielding NumPy batches.

One ``Pipeline`` (shuffling, per-process rows, padded evaluation, corrupt images) for
every dataset; what happens to each image is a preprocessing object's:
``SmallImagePreprocessing`` here for Fashion-MNIST and CIFAR-10, the paper's ImageNet
preprocessing in ``imagenet.py``.

TensorFlow is imported here only, lazily, and hidden from accelerators, so that the
model, the benchmark and their tests never need it.

Every random choice is a stateless function of (seed, epoch, position in the epoch),
so the batches of epoch e are the same whenever they are made: a resumed run sees
exactly the batches the uninterrupted run saw.
"""
from __future__ import annotations

import functools
import gzip
import os
from typing import Any, Iterator

import numpy as np

from alexnet_jax import datasets

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FETCH_FASHION_MNIST = (
    "make data    (or by hand: apt-get download dataset-fashion-mnist && "
    "dpkg-deb -x dataset-fashion-mnist_*.deb /tmp/fm && mkdir -p {raw} && "
    "cp /tmp/fm/usr/share/datasets/fashion-mnist/*.gz {raw}/)")


class DatasetUnavailableError(RuntimeError):
    """The dataset is neither prepared nor preparable here; the message says how to get it."""


def _tf():
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # input only: leave accelerators to JAX
    return tf


def read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped: big-endian dims, then uint8 data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@functools.lru_cache(maxsize=None)  # TFDS registers a builder class by name, once
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
                    "label": tfds.features.ClassLabel(names=datasets.FASHION_MNIST_CLASSES),
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


def load_builder(data: Any, allow_download: bool | None = None):
    """A prepared TFDS builder for ``config.data``, preparing it first where it can:
    from local files, else (``data.download``) through TFDS's own download."""
    if allow_download is None:
        allow_download = data.download
    import tensorflow_datasets as tfds
    _tf()
    tfds_dir = os.path.join(data.data_dir, "tfds")
    if data.dataset == "fashion_mnist":
        raw = os.path.join(data.data_dir, "fashion-mnist")
        builder = _fashion_mnist_builder_class()(data_dir=tfds_dir)
        if not builder.is_prepared():
            if all(os.path.exists(os.path.join(raw, f))
                   for pair in FASHION_MNIST_FILES.values() for f in pair):
                builder.download_and_prepare(
                    download_config=tfds.download.DownloadConfig(manual_dir=raw))
            else:
                return _download_or_explain("fashion_mnist", tfds_dir, allow_download,
                                            "Fashion-MNIST files not found in " + raw + ". Fetch "
                                            "them with:\n  " + FETCH_FASHION_MNIST.format(raw=raw))
        return builder
    info = datasets.info(data.dataset)
    builder = tfds.builder(info.tfds_name, data_dir=tfds_dir)
    if builder.is_prepared():
        return builder
    if data.dataset == "imagenet2012":
        raise DatasetUnavailableError(
            f"ImageNet is not prepared under {tfds_dir}. Place ILSVRC2012_img_train.tar and "
            f"ILSVRC2012_img_val.tar in {tfds_dir}/downloads/manual/ and run again; see README "
            "'Training on ImageNet'.")
    return _download_or_explain(info.tfds_name, tfds_dir, allow_download,
                                f"{info.tfds_name} is not prepared under {tfds_dir}.")


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
            f"{explanation}\nTFDS's own download of {name!r} failed too ({type(error).__name__}: "
            f"{str(error)[:200]}). Prepare it on a machine with internet access "
            f"(python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
            f"data_dir='{tfds_dir}').download_and_prepare()\") and copy {tfds_dir} here.") from error
    return builder


# --- preprocessing ops: small, named, composed by the config ----------------------------

def normalize(image, mean, std):
    tf = _tf()
    return (tf.cast(image, tf.float32) / 255.0 - mean) / std


def random_crop_with_padding(image, padding: int, seed):
    """Zero-pads each side by ``padding`` and crops back to the original size."""
    tf = _tf()
    if padding <= 0:
        return image
    height, width = image.shape[0], image.shape[1]
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    return tf.image.stateless_random_crop(padded, [height, width, image.shape[2]], seed=seed)


def random_flip(image, seed):
    tf = _tf()
    return tf.image.stateless_random_flip_left_right(image, seed=seed)


def example_seeds(seed: int, epoch, index, count: int):
    """``count`` stateless seeds for one example: a function of (run seed, epoch, index)."""
    tf = _tf()
    base = tf.cast(epoch, tf.int64) * (1 << 32) + tf.cast(index, tf.int64) * count
    return [tf.stack([tf.constant(seed, tf.int64), base + i]) for i in range(count)]


class SmallImagePreprocessing:
    """Fashion-MNIST / CIFAR-10: pad-and-crop and flips for training, nothing random in eval."""

    decoders = None  # TFDS decodes the small PNGs

    def __init__(self, config: Any):
        self.data = config.data
        self.seed = config.seed
        self.mean, self.std = datasets.normalization(config.data.dataset)

    def train(self, image, epoch, index):
        crop_seed, flip_seed = example_seeds(self.seed, epoch, index, 2)
        image = random_crop_with_padding(image, self.data.random_crop_padding, crop_seed)
        if self.data.flip:
            image = random_flip(image, flip_seed)
        return normalize(image, self.mean, self.std)

    def eval(self, image):
        return normalize(image, self.mean, self.std)


class Pipeline:
    """A TFDS dataset as NumPy batches: seeded shuffling, per-process rows, padded evaluation.

    What happens to each image is the ``preprocessing`` object's (``train``/``eval``);
    this class does the rest, the same for every dataset.
    """

    def __init__(self, config: Any, preprocessing: Any, builder: Any, info: datasets.DatasetInfo,
                 process_index: int = 0, process_count: int = 1):
        self.config = config
        self.image_shape = info.image_shape
        self.data = config.data
        self.preprocessing = preprocessing
        self.builder = builder
        self.process_index, self.process_count = process_index, process_count
        if config.batch_size % process_count:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                             f"{process_count} processes.")
        self.batch_size = config.batch_size // process_count
        label = builder.info.features["label"]
        self.num_classes = label.num_classes
        self._train = self._split(info.train_split, self.data.max_train_examples)
        self._test = self._split(info.test_split, self.data.max_test_examples)
        self.num_train = _count(self._train)
        self.num_test = _count(self._test)
        self.steps_per_epoch = self.num_train // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch_size {config.batch_size} exceeds the {self.num_train} "
                             "training examples.")

    def _split(self, split: str, limit: int):
        tf = _tf()
        import tensorflow_datasets as tfds
        # try_autocache off: TFDS would cache small datasets whole, under our take(limit)
        # (which then leaves its cache unfinished: tf.data warns and throws it away) and
        # beside our own cache of the decoded examples.
        read_config = tfds.ReadConfig(shuffle_seed=0, interleave_cycle_length=1,
                                      try_autocache=False)
        ds = self.builder.as_dataset(split=split, shuffle_files=False, read_config=read_config,
                                     decoders=self.preprocessing.decoders)
        if limit:
            ds = ds.take(limit)
        ds = ds.map(lambda ex: (ex["image"], ex["label"]), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.cache() if self.data.cache else ds

    def _own_rows(self, indexed_ds, global_batch: int):
        """This process's rows of every global batch of ``global_batch``: the contiguous block
        ``process_index`` of each, so that the global batches are the same whatever the
        number of processes (and with it every per-example random draw)."""
        local, index = global_batch // self.process_count, self.process_index
        if self.process_count == 1:
            return indexed_ds
        return indexed_ds.filter(lambda i, _: (i % global_batch) // local == index)

    def _handle_corrupt(self, ds):
        """Skips examples whose preprocessing fails (a corrupt image), with a warning, or
        lets the error through: ``data.corrupt_images`` = skip | fail."""
        if self.data.corrupt_images == "skip":
            return ds.ignore_errors(log_warning=True)
        if self.data.corrupt_images != "fail":
            raise ValueError(f"data.corrupt_images must be 'skip' or 'fail'; got "
                             f"{self.data.corrupt_images!r}.")
        return ds

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Epoch ``epoch``'s batches for this process, from step ``start_step`` of the epoch.

        Exactly ``steps_per_epoch`` of them: where corrupt images were skipped, the epoch's
        permutation is read again from its start to fill the last batches.  (Only for
        images this pipeline decodes: TFDS has checked the others when preparing them.)"""
        tf = _tf()
        ds = self._train.shuffle(self.data.shuffle_buffer, seed=self.config.seed * 100_003 + epoch,
                                 reshuffle_each_iteration=False)
        # After the global shuffle, so that the processes' rows make up one global batch.
        ds = self._own_rows(ds.enumerate(), self.config.batch_size)
        ds = ds.map(_plain_graph(lambda index, example: {
            "image": self.preprocessing.train(example[0], epoch, index), "label": example[1]}),
            num_parallel_calls=tf.data.AUTOTUNE)
        if self.preprocessing.decoders is not None:  # images decoded here may be corrupt
            ds = self._handle_corrupt(ds).repeat()
        ds = ds.batch(self.batch_size, drop_remainder=True).take(self.steps_per_epoch)
        ds = ds.skip(start_step).prefetch(tf.data.AUTOTUNE)
        return _explained(ds.as_numpy_iterator())

    def eval_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """This process's rows of every test batch of global size ``batch_size``: together
        the processes see every test example exactly once.  Short batches are padded with
        ``mask`` 0; every process yields the same number of batches."""
        tf = _tf()
        if batch_size % self.process_count:
            raise ValueError(f"eval_batch_size {batch_size} is not divisible by the "
                             f"{self.process_count} processes.")
        local = batch_size // self.process_count
        ds = self._own_rows(self._test.enumerate(), batch_size)
        ds = ds.map(_plain_graph(lambda i, example: {"image": self.preprocessing.eval(example[0]),
                                                     "label": example[1]}),
                    num_parallel_calls=tf.data.AUTOTUNE)
        ds = self._handle_corrupt(ds)
        yielded, seen, template = 0, 0, None
        for batch in _explained(ds.batch(local).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()):
            yielded, seen = yielded + 1, seen + len(batch["label"])
            template = {k: v[:0] for k, v in batch.items()}
            yield pad_batch(batch, local)
        expected = sum(min(local, max(0, self.num_test - start - self.process_index * local))
                       for start in range(0, self.num_test, batch_size))
        if seen < expected:
            print(f"warning: {expected - seen} of this process's {expected} test images could "
                  "not be read and were skipped (data.corrupt_images=skip).")
        if template is None:
            template = {"image": np.zeros((0, *self.image_shape), np.float32),
                        "label": np.zeros((0,), np.int64)}
        for _ in range(yielded, -(-self.num_test // batch_size)):  # others still have rows
            yield pad_batch(template, local)


def _plain_graph(fn):
    """``fn`` traced as it is, not rewritten by AutoGraph: the ops use no Python control
    flow on tensors, and AutoGraph re-reads source files when it converts, so editing the
    code during a run could otherwise make the run's evaluation trace the wrong lines."""
    return _tf().autograph.experimental.do_not_convert(fn)


def _explained(iterator):
    """Re-raises a corrupt image's decoding error with what to do about it."""
    tf = _tf()
    try:
        yield from iterator
    except tf.errors.InvalidArgumentError as error:
        raise DatasetUnavailableError(
            f"An image could not be decoded ({error.message.splitlines()[0][:200]}). Replace "
            "the file, or set data.corrupt_images=skip to skip such images with a warning."
        ) from None


def _count(ds) -> int:
    """Examples in a finite dataset: its cardinality where tf.data knows it, else by reading."""
    tf = _tf()
    cardinality = int(ds.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def pad_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    n = len(batch["label"])
    mask = np.zeros(size, np.float32)
    mask[:n] = 1.0
    padded = {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
              for k, v in batch.items()}
    return {**padded, "mask": mask}


def create_pipeline(config: Any, process_index: int = 0, process_count: int = 1) -> Pipeline:
    """The pipeline of ``config.data.dataset`` for this process."""
    info = datasets.info(config.data.dataset)
    if config.data.dataset in ("fashion_mnist", "cifar10"):
        return Pipeline(config, SmallImagePreprocessing(config), load_builder(config.data), info,
                        process_index, process_count)
    from alexnet_jax.input_pipeline import imagenet
    builder = imagenet.load_builder(config.data)
    return Pipeline(config, imagenet.PaperPreprocessing(config, builder), builder, info,
                    process_index, process_count)
