"""TFDS datasets as NumPy batches: one ``Pipeline`` for every dataset.

Seeded shuffling, per-process rows of each global batch, padded evaluation and corrupt
images are handled here, the same for every dataset; what happens to each image is the
preprocessing object's (``preprocess/``).

Every random choice is a stateless function of (seed, epoch, position in the epoch),
so the batches of epoch e are the same whenever they are made: a resumed run sees
exactly the batches the uninterrupted run saw.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from alexnet_jax.input_pipeline.preprocess import Preprocessing
from alexnet_jax.input_pipeline.sources import DatasetInfo, DatasetUnavailableError
from alexnet_jax.input_pipeline.tf_runtime import plain_graph, tf as _tf


class Pipeline:
    """A TFDS dataset as NumPy batches: seeded shuffling, per-process rows, padded evaluation.

    What happens to each image is the ``preprocessing`` object's (``train``/``eval``);
    this class does the rest, the same for every dataset.
    """

    def __init__(self, config: Any, preprocessing: Preprocessing, builder: Any, info: DatasetInfo,
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
        self.center_view = preprocessing.center_view
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
        ds = ds.map(plain_graph(lambda index, example: {
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
        ds = ds.map(plain_graph(lambda i, example: {"image": self.preprocessing.eval(example[0]),
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
