"""The paper's 256x256 store: every image down-sampled once, as the paper did.

"We down-sampled the images to a fixed resolution of 256 x 256 ... we first rescaled the
image such that the shorter side was of length 256, and then cropped out the central
256 x 256 patch" (Section 2).  Training then only decodes these small images and cuts
its 224 crops from them; the crops, flips and colour noise are cheap.

The store is a TFDS dataset (``tfds.builder_from_directory``) in
``DATA_DIR/prepared/<source>_256_<jpegQ|raw>/<VERSION>/`` (``store_dir``): ``image``
(256x256x3, JPEG at ``data.store_quality``, or raw uint8 with ``data.store_format=raw``)
and ``label``, with the source's splits.  ``prepare`` writes it shard by shard, decoding,
resizing and encoding on every core (tf.data), each shard renamed into place once complete,
so a preparation killed at any moment restarts at the first missing shard.

``shard_lengths.json`` records each shard's examples, bytes and CRC-32.  Opening the store
checks that every shard is there with its size (cheap: no file is read); one missing or
of another size is prepared again from the source, saying so, or, without the source,
is one error naming the file.  A shard whose bytes changed in place is found when a read
fails (``damaged_shards``: its CRC-32 against the record).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import time
import zlib
from typing import Any

import numpy as np

from alexnet_jax.input_pipeline import sources
from alexnet_jax.input_pipeline.preprocess.decode import decode_and_center_crop
from alexnet_jax.input_pipeline.preprocess.paper import RESIZE as SIDE
from alexnet_jax.input_pipeline.sources import DatasetUnavailableError
from alexnet_jax.input_pipeline.tf_runtime import tf

SHARD_EXAMPLES = 1024
FORMATS = ("jpeg", "raw")
VERSION = "1.0.0"


def source_name(data: Any) -> str:
    if data.dataset == "image_folder":
        return "image_folder_" + os.path.basename(os.path.normpath(data.image_folder))
    return data.dataset


def store_dir(data: Any) -> str:
    """Where ``config.data``'s store lives (the directory TFDS reads)."""
    form = "raw" if data.store_format == "raw" else f"jpeg{data.store_quality}"
    return os.path.join(data.data_dir, "prepared", f"{source_name(data)}_{SIDE}_{form}", VERSION)


def _features(data: Any, label_names: list[str]):
    import tensorflow_datasets as tfds
    image = (tfds.features.Tensor(shape=(SIDE, SIDE, 3), dtype=np.uint8,
                                  encoding=tfds.features.Encoding.BYTES)
             if data.store_format == "raw" else
             tfds.features.Image(shape=(SIDE, SIDE, 3), encoding_format="jpeg"))
    return tfds.features.FeaturesDict({"image": image,
                                       "label": tfds.features.ClassLabel(names=label_names)})


def square_uint8(image_bytes, side: int = SIDE):
    """Encoded image -> the store's image: the shorter side resized to ``side`` and the
    central square (``decode.decode_and_center_crop``), rounded to bytes."""
    return tf().cast(tf().round(decode_and_center_crop(image_bytes, side) * 255.0), tf().uint8)


def _encoder(data: Any):
    def encode(example):
        square = square_uint8(example["image"])
        image = square if data.store_format == "raw" else tf().io.encode_jpeg(
            square, quality=data.store_quality, chroma_downsampling=False)
        return {"image": image, "label": example["label"]}
    return encode


def split_records(builder: Any, split: str):
    """The serialized examples of ``split`` (a TFDS split string, slices included) in TFDS's
    order, read straight from the store's record files, so that a batch of them is parsed
    in one call (``parse_batch``) instead of by TFDS one example at a time."""
    datasets = []
    for instruction in builder.info.splits[split].file_instructions:
        records = tf().data.TFRecordDataset(instruction.filename).skip(instruction.skip)
        if instruction.take is not None and instruction.take >= 0:
            records = records.take(instruction.take)
        datasets.append(records)
    first, *rest = datasets
    for records in rest:
        first = first.concatenate(records)
    return first


def parse_batch(records, store_format: str):
    """A batch of serialized store examples as (images, labels): JPEG bytes, or for the raw
    store (N, SIDE, SIDE, 3) uint8, as TFDS would decode them."""
    features = {"image": tf().io.FixedLenFeature([], tf().string),
                "label": tf().io.FixedLenFeature([], tf().int64)}
    parsed = tf().io.parse_example(records, features)
    images = parsed["image"]
    if store_format == "raw":
        images = tf().reshape(tf().io.decode_raw(images, tf().uint8), [-1, SIDE, SIDE, 3])
    return images, parsed["label"]


def is_prepared(data: Any) -> bool:
    return os.path.exists(os.path.join(store_dir(data), "dataset_info.json"))


def _record(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, "shard_lengths.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _file_facts(path: str) -> dict[str, int]:
    return {"bytes": os.path.getsize(path), "crc32": _crc32(path)}


def check_shards(data: Any) -> list[tuple[str, int, str, str]]:
    """(split, shard, path, what is wrong) for every shard of the store that is missing or
    not of the size it was written with; nothing is read."""
    directory, problems = store_dir(data), []
    record = _record(directory)
    for split in record.get("finished_splits", []):
        for index in range(len(record.get(split, []))):
            path = _shard_path(directory, split, index)
            expected = record.get("files", {}).get(os.path.basename(path), {}).get("bytes")
            if not os.path.exists(path):
                problems.append((split, index, path, "missing"))
            elif expected is not None and os.path.getsize(path) != expected:
                problems.append((split, index, path, f"{os.path.getsize(path):,} bytes, not "
                                 f"the {expected:,} it was written with"))
    return problems


def is_store(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, "shard_lengths.json"))


def damaged_shards(directory: str) -> list[str]:
    """The shards of the store in ``directory`` whose bytes are not those they were written
    with (CRC-32: each file is read once)."""
    files = _record(directory).get("files", {})
    return [os.path.join(directory, name) for name, facts in sorted(files.items())
            if not os.path.exists(os.path.join(directory, name))
            or _file_facts(os.path.join(directory, name)) != facts]


def damage_error(directory: str, error: Any) -> DatasetUnavailableError:
    """What a failed read of the store in ``directory`` means: the shards whose bytes
    changed (by their CRC-32), and what to do."""
    files = ", ".join(damaged_shards(directory)) or error.message.splitlines()[0][:300]
    return DatasetUnavailableError(
        f"A file of the prepared store is damaged ({files}): its bytes are not those it was "
        "written with. Delete it and run again: it is prepared again from its source.")


@contextlib.contextmanager
def damage_explained(directory: str):
    """Raises a read error of the store in ``directory`` as ``damage_error``'s one line."""
    try:
        yield
    except (tf().errors.DataLossError, tf().errors.NotFoundError) as error:
        raise damage_error(directory, error) from None


def open_store(data: Any, source: Any | None = None, announce: bool = True,
               progress: bool = True):
    """The store's TFDS builder, preparing it first where it is missing or half-written
    (with a progress bar where ``progress``), and preparing again each shard that is
    missing or of another size."""
    import tensorflow_datasets as tfds
    if not is_prepared(data):
        if announce:
            print(f"Preparing the {SIDE}x{SIDE} store of {source_name(data)} in "
                  f"{store_dir(data)} (once, on every core; a stopped preparation resumes): "
                  f"python -m alexnet_jax.prepare does the same beforehand.", flush=True)
        prepare(data, source, progress)
    repair_shards(data, source)
    builder = tfds.builder_from_directory(store_dir(data))
    shape = tuple(builder.info.features["image"].shape)
    if shape != (SIDE, SIDE, 3):
        raise DatasetUnavailableError(
            f"The store {store_dir(data)} holds images of {shape}, not the paper's "
            f"({SIDE}, {SIDE}, 3). Delete it and run again to prepare it anew.")
    return builder


def prepare(data: Any, source: Any | None = None, progress: bool = True) -> dict[str, Any]:
    """Writes the missing shards of every split, then the TFDS metadata; returns the
    images written per second."""
    import tensorflow_datasets as tfds
    if data.store_format not in FORMATS:
        raise ValueError(f"data.store_format must be one of {FORMATS}; got {data.store_format!r}.")
    source = source or sources.load_builder(data)
    directory = store_dir(data)
    os.makedirs(directory, exist_ok=True)
    lengths_path = os.path.join(directory, "shard_lengths.json")
    lengths: dict[str, Any] = _record(directory)
    written, started = 0, time.perf_counter()
    split_infos = []
    finished = lengths.setdefault("finished_splits", [])
    info = sources.info(data.dataset)
    for split in (info.train_split, info.test_split):
        done = lengths.setdefault(split, [])
        if split not in finished:
            known = source.info.splits[split].num_examples if split in source.info.splits else 0
            written += _write_split(data, source, split, known, done, directory, lengths,
                                    lengths_path, progress)
            finished.append(split)
            _save_json(lengths, lengths_path)
        split_infos.append(tfds.core.SplitInfo(
            name=split, shard_lengths=list(done), num_bytes=sum(
                os.path.getsize(_shard_path(directory, split, i)) for i in range(len(done))),
            filename_template=_template(directory, split)))
    names = source.info.features["label"].names
    tfds.folder_dataset.write_metadata(
        data_dir=directory, features=_features(data, names), split_infos=split_infos,
        filename_template=_template(directory), check_data=False,
        description=f"The {SIDE}x{SIDE} central squares of {source_name(data)} (alexnet_jax).")
    seconds = time.perf_counter() - started
    return {"images": written, "seconds": seconds,
            "images_per_s": written / seconds if written else 0.0}


def _template(directory: str, split: str | None = None):
    """Shard files named by their index alone: how many a split has is known at its end."""
    from tensorflow_datasets.core import naming
    return naming.ShardedFileTemplate(
        data_dir=directory, dataset_name="store", split=split, filetype_suffix="tfrecord",
        template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_INDEX}")


def _shard_path(directory: str, split: str, index: int) -> str:
    return os.fspath(_template(directory, split).sharded_filepath(shard_index=index,
                                                                  num_shards=index + 1))


def _save_json(value: Any, path: str) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)


def _from_position(source: Any, split: str, start: int):
    """``split`` of ``source`` (images still encoded) from example ``start`` on: by TFDS's
    sub-split where the builder has one (no reading of what is skipped), else by skipping."""
    import tensorflow_datasets as tfds
    options = dict(shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()},
                   read_config=tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False))
    if not start:
        return source.as_dataset(split=split, **options)
    try:
        return source.as_dataset(split=f"{split}[{start}:]", **options)
    except ValueError:  # ImageFolder has no sub-splits
        return source.as_dataset(split=split, **options).skip(start)


def _encoded(data: Any, source: Any, split: str, start: int):
    """(position in the source, the example with its store image) of ``split`` from
    example ``start`` on; an image that cannot be decoded is skipped with a warning."""
    encode = _encoder(data)
    ds = _from_position(source, split, start).enumerate(start=start).map(
        lambda position, example: (position, encode(example)),
        num_parallel_calls=tf().data.AUTOTUNE, deterministic=True)
    return ds.ignore_errors(log_warning=True).prefetch(tf().data.AUTOTUNE)


def _before(position: Any, example: Any, end: int) -> Any:
    return position < end


def repair_shards(data: Any, source: Any | None = None) -> list[tuple[str, int, str, str]]:
    """Prepares again, saying so, every shard that ``check_shards`` finds missing or of
    another size, from the source (the same examples as before: shard k holds the source's
    examples k * SHARD_EXAMPLES onwards), or says which file is wrong and what to do where
    the source is unavailable; returns those shards."""
    problems = check_shards(data)
    if not problems:
        return problems
    directory = store_dir(data)
    try:
        source = source or sources.load_builder(data)
    except DatasetUnavailableError as error:
        split, index, path, what = problems[0]
        raise DatasetUnavailableError(
            f"The store's file {path} is {what}, and the source it was prepared from is "
            f"unavailable ({error}). Restore the file, or make the source available and run "
            "again: the file is then prepared again.") from None
    record = _record(directory)
    features = _features(data, source.info.features["label"].names)
    for split, index, path, what in problems:
        print(f"warning: The store's file {path} is {what}; preparing it again from the "
              "source.", flush=True)
        start = index * SHARD_EXAMPLES
        examples = _encoded(data, source, split, start).take_while(
            functools.partial(_before, end=start + SHARD_EXAMPLES))
        count = 0
        with tf().io.TFRecordWriter(path + ".incomplete") as writer:
            for _, example in examples.as_numpy_iterator():
                writer.write(features.serialize_example({"image": example["image"],
                                                         "label": int(example["label"])}))
                count += 1
        if count != record[split][index]:
            raise DatasetUnavailableError(
                f"The store's file {path} was prepared again with {count} examples, not the "
                f"{record[split][index]} it held: its source changed. Delete {directory} and "
                "run again to prepare the whole store anew.")
        os.replace(path + ".incomplete", path)
        record.setdefault("files", {})[os.path.basename(path)] = _file_facts(path)
    _save_json(record, os.path.join(directory, "shard_lengths.json"))
    return problems


def _write_split(data, source, split, total, done, directory, lengths, lengths_path,
                 progress) -> int:
    """Writes shards ``len(done)`` onwards of ``split``: shard k holds the source's examples
    k * SHARD_EXAMPLES to (k + 1) * SHARD_EXAMPLES - 1, less any that cannot be decoded
    (skipped with a warning), so that a restart at shard k reads from exactly there."""
    first = len(done)
    features = _features(data, source.info.features["label"].names)
    ds = _encoded(data, source, split, first * SHARD_EXAMPLES)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total or None, initial=first * SHARD_EXAMPLES, unit="img",
                   desc=f"{source_name(data)} {split}", dynamic_ncols=True)
    shard, writer, count, written, position = first, None, 0, 0, -1

    def finish(shard: int, count: int) -> None:
        path = _shard_path(directory, split, shard)
        os.replace(path + ".incomplete", path)
        done.append(count)
        lengths.setdefault("files", {})[os.path.basename(path)] = _file_facts(path)
        _save_json(lengths, lengths_path)
        if bar is not None:
            bar.update(count)

    for position, example in ds.as_numpy_iterator():
        while position >= (shard + 1) * SHARD_EXAMPLES or writer is None:
            if writer is not None:
                writer.close()
                finish(shard, count)
                shard, count = shard + 1, 0
            writer = tf().io.TFRecordWriter(_shard_path(directory, split, shard) + ".incomplete")
        writer.write(features.serialize_example({"image": example["image"],
                                                 "label": int(example["label"])}))
        count += 1
        written += 1
    if writer is not None:
        writer.close()
        finish(shard, count)
    if bar is not None:
        bar.close()
    # The source's size where its builder knows it, else up to the last example decoded.
    read = (total or int(position) + 1) - first * SHARD_EXAMPLES
    if read > written:
        print(f"warning: {read - written} of the {read} {split} images read could not be decoded "
              "and were left out of the store (data.corrupt_images does not apply here).")
    return written
