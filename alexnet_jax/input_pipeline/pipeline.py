"""TFDS datasets as NumPy batches: one ``Pipeline`` for every dataset.

Seeded shuffling, per-process rows of each global batch, padded evaluation and corrupt
images are handled here, the same for every dataset; what happens to each image is the
preprocessing object's (``preprocess/``).

Every random choice is a stateless function of (seed, epoch, position in the epoch),
so the batches of epoch e are the same whenever they are made: a resumed run sees
exactly the batches the uninterrupted run saw.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from alexnet_jax.input_pipeline import store
from alexnet_jax.input_pipeline.preprocess import Preprocessing
from alexnet_jax.input_pipeline.sources import DatasetInfo, DatasetUnavailableError
from alexnet_jax.input_pipeline.tf_runtime import plain_graph
from alexnet_jax.input_pipeline.tf_runtime import tf as _tf
from alexnet_jax.runtime.errors import ConfigError


class Pipeline:
    """A TFDS dataset as NumPy batches: seeded shuffling, per-process rows, padded evaluation.

    What happens to each image is the ``preprocessing`` object's (``train``/``eval``, or
    ``train_batch`` over a batch where it has one: see ``Preprocessing``);
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
        self.batch_size = config.batch_size // process_count
        label = builder.info.features["label"]
        self.num_classes = label.num_classes
        held_out = self.data.validation_examples
        total = builder.info.splits[info.train_split].num_examples if held_out else 0
        if held_out and held_out >= total:
            raise ConfigError(f"config.data.validation_examples={held_out} leaves none of the "
                              f"{total} training examples to train on; hold out fewer.")
        # The validation split: the last ``held_out`` examples of the training split, in
        # TFDS's (fixed) order; training reads the others.
        train_split = f"{info.train_split}[:-{held_out}]" if held_out else info.train_split
        self._train_split_name = train_split
        # Preprocessing with a batch form trains a batch per call, on serialized records
        # where it reads them (``records``), else on (image, label) pairs.
        self._trains_in_batches = hasattr(preprocessing, "train_batch")
        self._splits = {"train": self._split(train_split, self.data.max_train_examples,
                                             records=hasattr(preprocessing, "records")),
                        "test": self._split(info.test_split, self.data.max_test_examples)}
        if held_out:
            self._splits["validation"] = self._split(f"{info.train_split}[-{held_out}:]", 0)
        self.evaluation_splits = tuple(k for k in ("validation", "test") if k in self._splits)
        self.sizes = {name: _count(ds) for name, ds in self._splits.items()}
        self.num_train, self.num_test = self.sizes["train"], self.sizes["test"]
        self.steps_per_epoch = self.num_train // config.batch_size
        self.center_view = preprocessing.center_view
        # The part of the preprocessing that runs in the jitted steps (None: all on the host).
        self.device = getattr(preprocessing, "device", None)
        # Source images decoded here may be corrupt: skipped (counted) or an error.
        self.skips_undecodable = (getattr(preprocessing, "decodes_source_images", False)
                                  and self.data.corrupt_images == "skip")
        if self.steps_per_epoch == 0:
            raise ConfigError(f"config.batch_size={config.batch_size} exceeds the "
                              f"{self.num_train} training examples; lower it.")

    def _split(self, split: str, limit: int, records: bool = False):
        """``split`` (up to ``limit`` examples) as (image, label) pairs, or with ``records``
        as the preprocessing's serialized examples."""
        tf = _tf()
        import tensorflow_datasets as tfds
        if records:
            ds = self.preprocessing.records(split)
            ds = ds.take(limit) if limit else ds
            return ds.cache() if self.data.cache else ds
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

    def _map_examples(self, ds, fn):
        """``ds.map(fn)``; where source images are decoded here and
        ``data.corrupt_images=skip``, an example ``fn`` fails on (a corrupt image) is
        skipped with a warning.  Only ``fn``'s errors are skipped: each example is mapped in
        a dataset of its own, so that an error in reading ``ds`` (a damaged record file)
        comes through instead of being skipped over and over at the same place."""
        tf = _tf()
        if not self.skips_undecodable:
            return ds.map(plain_graph(fn), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.interleave(
            lambda *example: tf.data.Dataset.from_tensors(example).map(plain_graph(fn))
            .ignore_errors(log_warning=True),
            cycle_length=16, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Epoch ``epoch``'s batches for this process, from step ``start_step`` of the epoch.

        Exactly ``steps_per_epoch`` of them: where corrupt images were skipped, the epoch's
        permutation is read again from its start to fill the last batches.  (Only for
        images this pipeline decodes: TFDS has checked the others when preparing them.)"""
        tf = _tf()
        if self.data.service_address:
            return self._service_batches(epoch, start_step)
        if self._trains_in_batches:
            ds = self._shuffled(self._splits["train"], epoch).batch(self.batch_size,
                                                                    drop_remainder=True)
            ds = ds.map(plain_graph(lambda positions, examples: self._train_batch(
                examples, epoch, positions)), num_parallel_calls=tf.data.AUTOTUNE)
        else:
            ds = self._map_examples(self._shuffled(self._splits["train"], epoch),
                                    lambda position, example: self._train_example(
                                        example, epoch, self._global_index(epoch, position)))
            if self.skips_undecodable:  # refill the epoch's last batches
                ds = ds.repeat()
            ds = ds.batch(self.batch_size, drop_remainder=True)
        ds = ds.take(self.steps_per_epoch).skip(start_step).prefetch(tf.data.AUTOTUNE)
        return _explained(without_autotune_thread(ds).as_numpy_iterator(), self.builder)

    def _shuffled(self, ds, epoch: int):
        """Epoch ``epoch``'s permutation of ``ds`` as (position, element), this process's rows.
        The permutation depends only on the seed, the epoch and the number of elements."""
        ds = ds.shuffle(self.data.shuffle_buffer, seed=self.config.seed * 100_003 + epoch,
                        reshuffle_each_iteration=False)
        # After the global shuffle, so that the processes' rows make up one global batch.
        return self._own_rows(ds.enumerate(), self.config.batch_size)

    def _global_index(self, epoch: int, position):
        """An example's index over the whole run: epoch x training examples + position."""
        tf = _tf()
        return tf.cast(epoch, tf.int64) * self.num_train + position

    def _train_example(self, example, epoch, index) -> dict[str, Any]:
        """The preprocessing's training example; where its augmentation runs on the device,
        with ``index`` (``_global_index``), on which every random draw depends."""
        image, label = example[0], example[1]
        features = self.preprocessing.train(image, epoch, index)
        features = dict(features) if isinstance(features, dict) else {"image": features}
        return {**self._with_index(features, index), "label": label}

    def _train_batch(self, examples, epoch, positions) -> dict[str, Any]:
        """``_train_example`` for a batch (of serialized records, or of examples), in one
        call."""
        index = self._global_index(epoch, positions)
        return self._with_index(dict(self.preprocessing.train_batch(examples, epoch, index)),
                                index)

    def _with_index(self, features: dict[str, Any], index) -> dict[str, Any]:
        if self.device is not None:
            features["index"] = _tf().cast(index % (2 ** 31 - 1), _tf().int32)
        return features

    def _service_batches(self, epoch: int, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        """Epoch ``epoch``'s batches with the per-example work on tf.data service workers
        (``data.service_address``).  Each example's draws depend on its TFDS id and the
        epoch, not on its position, which the service does not keep: the epoch's examples
        come in the workers' order, so a resumed run does not see the same batches."""
        tf = _tf()
        ds = self._service_source().shuffle(self.data.shuffle_buffer,
                                            seed=self.config.seed * 100_003 + epoch)
        ds = self._map_examples(ds, lambda image, label, key: self._train_example(
            (image, label), epoch, tf.strings.to_hash_bucket_fast(
                tf.strings.join([key, tf.strings.as_string(epoch)], "/"), 2 ** 31 - 1)))
        ds = distributed(ds, self.data.service_address,
                         f"alexnet_jax-{self.config.seed}-{epoch}-{start_step}")
        ds = ds.repeat().batch(self.batch_size, drop_remainder=True)
        ds = ds.take(self.steps_per_epoch - start_step).prefetch(tf.data.AUTOTUNE)
        return _explained(without_autotune_thread(ds).as_numpy_iterator(), self.builder)

    def _service_source(self):
        """The training split as (image, label, TFDS id) triples."""
        import tensorflow_datasets as tfds
        read_config = tfds.ReadConfig(shuffle_seed=0, add_tfds_id=True, try_autocache=False)
        split = self._train_split_name
        ds = self.builder.as_dataset(split=split, shuffle_files=False, read_config=read_config,
                                     decoders=self.preprocessing.decoders)
        if self.data.max_train_examples:
            ds = ds.take(self.data.max_train_examples)
        return ds.map(lambda ex: (ex["image"], ex["label"], ex["tfds_id"]))

    def eval_batches(self, batch_size: int, split: str = "test"
                     ) -> Iterator[dict[str, np.ndarray]]:
        """This process's rows of every batch of global size ``batch_size`` of an evaluation
        split (``evaluation_splits``): together the processes see every example exactly
        once.  Short batches are padded with ``mask`` 0; every process yields the same
        number of batches."""
        tf = _tf()
        local, size = batch_size // self.process_count, self.sizes[split]
        ds = self._own_rows(self._splits[split].enumerate(), batch_size)
        ds = self._map_examples(ds, lambda i, example: {
            "image": self.preprocessing.eval(example[0]), "label": example[1]})
        yielded, seen, template = 0, 0, None
        ds = without_autotune_thread(ds.batch(local).prefetch(tf.data.AUTOTUNE))
        for batch in _explained(ds.as_numpy_iterator(), self.builder):
            yielded, seen = yielded + 1, seen + len(batch["label"])
            template = {k: v[:0] for k, v in batch.items()}
            yield pad_batch(batch, local)
        expected = sum(min(local, max(0, size - start - self.process_index * local))
                       for start in range(0, size, batch_size))
        if seen < expected:
            print(f"warning: {expected - seen} of this process's {expected} {split} images could "
                  "not be read and were skipped (data.corrupt_images=skip).")
        if template is None:
            template = {"image": np.zeros((0, *self.image_shape), np.float32),
                        "label": np.zeros((0,), np.int64)}
        for _ in range(yielded, -(-size // batch_size)):  # others still have rows
            yield pad_batch(template, local)


def _explained(iterator, builder: Any = None):
    """Re-raises a corrupt image's decoding error, or a damaged file of the prepared
    dataset, as what to do about it."""
    # Bound before the first batch: a generator closed at interpreter exit would find
    # TensorFlow's modules torn down when its except clauses look them up.
    errors = _tf().errors
    undecodable = errors.InvalidArgumentError
    damaged = (errors.DataLossError, errors.NotFoundError)
    try:
        yield from iterator
    except undecodable as error:
        raise DatasetUnavailableError(
            f"An image could not be decoded ({error.message.splitlines()[0][:200]}). Replace "
            "the file, or set data.corrupt_images=skip to skip such images with a warning."
        ) from None
    except damaged as error:
        where = getattr(builder, "data_dir", "the prepared dataset's directory")
        if store.is_store(where):  # its shards are prepared again one by one
            raise store.damage_error(where, error) from None
        files = ", ".join(damaged_files(builder)) or error.message.splitlines()[0][:300]
        raise _damaged(files, where) from None


def _damaged(files: str, where: str) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"A file of the prepared dataset is damaged or missing ({files}). Delete {where} and "
        "run again: it is prepared anew from its source.")


# TFRecord frames each record with 16 bytes (its length, and two CRC-32s).
RECORD_FRAMING = 16
# Splits this small are read through (every record's CRC) before training; larger ones
# have their sizes checked and their records' CRCs as they are read.
READ_THROUGH_BYTES = 64 * 2**20


def check_splits(builder: Any, read_through: tuple[str, ...] = ("test",)) -> None:
    """Every split of a prepared TFDS dataset, checked before training: its files are all
    there, with the bytes TFDS recorded (``num_bytes`` and the records' framing), and the
    ``read_through`` splits of at most ``READ_THROUGH_BYTES`` read through.  A damaged
    test split then stops a run before its first step, not at its first evaluation."""
    data_dir = getattr(builder, "data_dir", "")
    if not os.path.exists(os.path.join(data_dir, "dataset_info.json")):
        return  # not read from prepared record files: TFDS's mock data, an image folder
    for name, split in builder.info.splits.items():
        paths = [os.path.join(builder.data_dir, file) for file in split.filenames]
        missing = [path for path in paths if not os.path.exists(path)]
        expected = split.num_bytes + RECORD_FRAMING * split.num_examples
        found = sum(os.path.getsize(path) for path in paths if os.path.exists(path))
        if missing or (split.num_bytes and found != expected):
            what = (f"missing {', '.join(missing)}" if missing else
                    f"{found:,} bytes where {expected:,} were written")
            raise DatasetUnavailableError(
                f"The {name} split of the prepared dataset in {builder.data_dir} is damaged "
                f"({what}). Delete {builder.data_dir} and run again: it is prepared anew from "
                "its source.")
        if name in read_through and found <= READ_THROUGH_BYTES:
            damaged = damaged_files(builder, (name,))
            if damaged:
                raise _damaged(", ".join(damaged), builder.data_dir)


def damaged_files(builder: Any, splits: tuple[str, ...] | None = None) -> list[str]:
    """The prepared dataset's record files (of ``splits``, default all) that are missing or
    fail their checksums, each read through once."""
    tf = _tf()
    damaged = []
    for name, split in getattr(getattr(builder, "info", None), "splits", {}).items():
        if splits is not None and name not in splits:
            continue
        for file in split.filenames:
            path = os.path.join(builder.data_dir, file)
            try:
                tf.data.TFRecordDataset(path).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)
            except (tf.errors.DataLossError, tf.errors.NotFoundError):
                damaged.append(path)
    return damaged


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


def distributed(ds, address: str, job_name: str):
    """``ds`` with its work done by the tf.data service at ``address`` (a dispatcher and its
    workers: ``python -m alexnet_jax.data_service``): every element once, split among the
    workers as they ask for work, in no fixed order."""
    tf = _tf()
    return ds.apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC, service=address,
        job_name=job_name))


def without_autotune_thread(ds):
    """``ds`` without tf.data's autotuning thread, AUTOTUNE meaning one call per core.

    That thread sleeps between optimisations for a period that doubles as the epoch goes
    on (up to a minute), and an iterator's destruction waits for it to wake: a run stopped
    late in an epoch took that long to exit.  With it off, a stop takes seconds."""
    options = _tf().data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)
