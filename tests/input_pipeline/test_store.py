"""The paper's 256x256 store: its images against the reference centre square, preparation
resumed after a kill, the on-device augmentation against the host's ops for the same
draws, and the tf.data service delivering an epoch once."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax import input_pipeline  # noqa: E402
from alexnet_jax.input_pipeline import pipeline as pipeline_lib  # noqa: E402
from alexnet_jax.input_pipeline import sources, store
from alexnet_jax.input_pipeline.preprocess import imagenet as host  # noqa: E402
from alexnet_jax.input_pipeline.preprocess.on_device import PaperAugmentation  # noqa: E402
from alexnet_jax.training.config_base import base_config  # noqa: E402

# Stated tolerance of the JPEG store (quality 95, no chroma subsampling) against the exact
# centre square, in units of 1/255 of the pixel range.
MEAN_ABS_TOLERANCE, MAX_ABS_TOLERANCE = 1.25, 16.0


def photo(index, width=150, height=100):
    """A photo-like image (smooth colour fields, noise) whose first pixels encode ``index``."""
    rng = np.random.default_rng(index)
    coarse = rng.integers(0, 256, (height // 10 + 1, width // 10 + 1, 3), np.uint8)
    image = np.kron(coarse, np.ones((10, 10, 1), np.uint8))[:height, :width].astype(np.float64)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    return image


def write_folder(root, per_class=5, classes=3):
    from PIL import Image
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                index = (0 if split == "train" else 1000) + c * per_class + i
                Image.fromarray(photo(index)).save(folder / f"{index}.jpg", quality=95)


def folder_config(root, data_dir, **data):
    config = base_config()
    config.data.dataset = "image_folder"
    config.data.image_folder = str(root)
    config.data.data_dir = str(data_dir)
    config.data.mean_images = 100
    config.batch_size = 3
    for key, value in data.items():
        config.data[key] = value
    return config


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_folder(root)
    return root


def stored_images(config, split="train"):
    """The store's images, decoded as training decodes them."""
    builder = store.open_store(config.data, announce=False)
    decoders = None if config.data.store_format == "raw" else {
        "image": tfds.decode.SkipDecoding()}
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
    ds = ds.map(lambda ex: (host.decode_store_image(ex["image"]), ex["label"]))
    return [(np.asarray(image), int(label)) for image, label in ds.as_numpy_iterator()]


def test_stored_images_equal_the_reference_centre_square_within_the_stated_tolerance(
        folder, tmp_path):
    config = folder_config(folder, tmp_path)
    store.prepare(config.data, progress=False)
    source = tfds.folder_dataset.ImageFolder(str(folder))
    sources = source.as_dataset(split="train", shuffle_files=False,
                                decoders={"image": tfds.decode.SkipDecoding()})
    reference = [np.asarray(host.decode_and_center_crop(ex["image"])) * 255
                 for ex in sources.as_numpy_iterator()]
    stored = stored_images(config)
    assert len(stored) == len(reference) == 15
    errors = np.abs(np.stack([s for s, _ in stored]).astype(np.float64) - np.stack(reference))
    assert errors.mean() < MEAN_ABS_TOLERANCE and errors.max() < MAX_ABS_TOLERANCE
    raw = folder_config(folder, tmp_path, store_format="raw")
    store.prepare(raw.data, progress=False)
    exact = np.stack([s for s, _ in stored_images(raw)]).astype(np.float64)
    assert np.abs(exact - np.stack(reference)).max() <= 0.5 + 1e-3  # rounding to bytes only


def test_a_killed_preparation_resumes_and_yields_every_example_once(folder, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setattr(store, "SHARD_EXAMPLES", 4)
    config = folder_config(folder, tmp_path, store_format="raw")
    real_replace, renames = os.replace, []

    def dies_at_the_third_shard(source, target):
        if str(target).endswith(("-00002",)):
            raise KeyboardInterrupt  # the kill, after two complete shards
        renames.append(target)
        return real_replace(source, target)

    monkeypatch.setattr(store.os, "replace", dies_at_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        store.prepare(config.data, progress=False)
    monkeypatch.setattr(store.os, "replace", real_replace)
    assert not store.is_prepared(config.data)
    store.prepare(config.data, progress=False)
    images = stored_images(config)
    keys = sorted((label, image[:8, :8].tobytes()) for image, label in images)
    assert len(images) == 15 and len(set(keys)) == 15  # every example, each once
    assert [len(stored_images(config, "val"))] == [15]


@pytest.fixture
def sharded_store(folder, tmp_path, monkeypatch):
    """The folder's JPEG store in shards of 4 examples (4 for each split's 15), and its
    images as prepared."""
    monkeypatch.setattr(store, "SHARD_EXAMPLES", 4)
    config = folder_config(folder, tmp_path)
    store.prepare(config.data, progress=False)
    return config, stored_images(config)


def shard(config, index=1, split="train"):
    return store._shard_path(store.store_dir(config.data), split, index)


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_missing_or_truncated_shard_is_prepared_again_on_opening_saying_so(
        sharded_store, capsys, damage):
    config, before = sharded_store
    path = shard(config)
    if damage == "delete":
        os.remove(path)
    else:
        os.truncate(path, os.path.getsize(path) // 2)
    capsys.readouterr()
    after = stored_images(config)
    out = capsys.readouterr().out
    assert [(a.tobytes(), label) for a, label in after] == \
        [(b.tobytes(), label) for b, label in before]  # the same examples, the same bytes
    what = "missing" if damage == "delete" else "bytes, not the"
    assert f"warning: The store's file {path} is" in out and what in out
    assert "preparing it again from the source" in out
    assert store.check_shards(config.data) == []


def test_prepare_on_a_prepared_store_prepares_a_missing_shard_again(sharded_store, capsys):
    """``python -m alexnet_jax.prepare`` on a store already prepared checks its shards
    (store.repair_shards) instead of calling it done."""
    config, before = sharded_store
    path = shard(config, 3)
    os.remove(path)
    assert store.is_prepared(config.data)
    assert [p[2] for p in store.repair_shards(config.data)] == [path]
    assert "is missing; preparing it again from the source" in capsys.readouterr().out
    assert store.repair_shards(config.data) == []
    assert [(a.tobytes(), label) for a, label in stored_images(config)] == \
        [(b.tobytes(), label) for b, label in before]


def test_a_missing_shard_without_its_source_is_one_error_naming_the_file(
        sharded_store, monkeypatch):
    config, _ = sharded_store
    os.remove(shard(config, 2, "val"))

    def gone(data):
        raise sources.DatasetUnavailableError(f"{data.image_folder} does not exist")

    monkeypatch.setattr(sources, "load_builder", gone)
    with pytest.raises(input_pipeline.DatasetUnavailableError, match=(
            rf"The store's file {re.escape(shard(config, 2, 'val'))} is missing, and the source "
            r"it was prepared from is unavailable \(.* does not exist\)\. Restore the file, "
            r"or make the source available and run again")):
        store.open_store(config.data, announce=False)


def test_a_shard_damaged_in_place_fails_the_reading_naming_the_file(sharded_store):
    """Bytes changed in the middle of a shard, its size kept: opening cannot see it (no
    file is read); the first read through it (the split's size, or the epoch) hits
    TFRecord's CRC, and the error names the file."""
    config, _ = sharded_store
    input_pipeline.create_pipeline(config)  # the mean image, computed and kept
    path = shard(config, 2)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\x00" * 64)
    assert store.check_shards(config.data) == []
    with pytest.raises(input_pipeline.DatasetUnavailableError, match=(
            rf"^A file of the prepared store is damaged \({re.escape(path)}\): its bytes are "
            r"not those it was written with\. Delete it and run again: it is prepared again "
            r"from its source\.$")):
        for _ in input_pipeline.create_pipeline(config).train_batches(0):
            pass


def test_a_store_of_another_size_is_refused_clearly(folder, tmp_path, monkeypatch):
    config = folder_config(folder, tmp_path, store_format="raw")
    where = store.store_dir(config.data)
    monkeypatch.setattr(store, "store_dir", lambda data: where)
    monkeypatch.setattr(store, "SIDE", 128)
    monkeypatch.setattr(store, "square_uint8",
                        lambda image, side=128: tf.cast(host.decode_and_center_crop(image, 128)
                                                        * 255, tf.uint8))
    store.prepare(config.data, progress=False)
    monkeypatch.undo()
    with pytest.raises(input_pipeline.DatasetUnavailableError, match=r"\(128, 128, 3\), not the "
                                                                     r"paper's \(256, 256, 3\)"):
        store.open_store(config.data, announce=False)


def test_on_device_augmentation_equals_the_host_ops_for_the_same_draws():
    rng = np.random.default_rng(0)
    mean = rng.uniform(0, 1, (256, 256, 3)).astype(np.float32)
    images = rng.integers(0, 256, (6, 224, 224, 3), np.uint8)
    offsets = rng.integers(0, 33, (6, 2)).astype(np.int32)
    indexes = np.arange(100, 106, dtype=np.int32)
    augmentation = PaperAugmentation(mean=mean, seed=7)
    got = np.asarray(jax.jit(augmentation.train)({"image": images, "offset": offsets,
                                                   "index": indexes}))
    for i in range(6):
        flip, alpha = (np.asarray(v) for v in augmentation.draws(jnp.int32(indexes[i])))
        y, x = offsets[i]
        expected = tf.cast(images[i], tf.float32) / 255.0 - mean[y:y + 224, x:x + 224]
        expected = tf.image.flip_left_right(expected) if flip else expected
        expected = host.lighting(expected, alpha).numpy()
        # The same three float32 operations (mean, flip, a lighting offset) on values of
        # at most 1: each rounds by 6e-8; another crop or flip differs by ~1e-1.
        np.testing.assert_allclose(got[i], expected, rtol=1e-6, atol=1e-6)
    flips = [bool(augmentation.draws(jnp.int32(i))[0]) for i in range(64)]
    assert 16 < sum(flips) < 48  # both occur


def test_on_device_ten_patches_equal_the_hosts():
    rng = np.random.default_rng(1)
    mean = rng.uniform(0, 1, (256, 256, 3)).astype(np.float32)
    images = rng.integers(0, 256, (2, 256, 256, 3), np.uint8)
    got = np.asarray(PaperAugmentation(mean=mean).eval({"image": images}))
    for i in range(2):
        expected = host.ten_crops(host.subtract_mean(tf.cast(images[i], tf.float32) / 255.0,
                                                     mean)).numpy()
        np.testing.assert_allclose(got[i], expected, rtol=1e-6, atol=1e-6)


def test_the_pipeline_sends_uint8_crops_with_their_corners_and_global_indexes(folder, tmp_path):
    """Host batches from the store: uint8 224 crops cut at the sent corners, indexes
    epoch x examples + position, the same batches when resumed mid-epoch."""
    config = folder_config(folder, tmp_path, store_format="raw", shuffle_buffer=100)
    pipeline = input_pipeline.create_pipeline(config)
    assert pipeline.device is not None and pipeline.num_train == 15
    epoch1 = list(pipeline.train_batches(1))
    resumed = list(pipeline.train_batches(1, start_step=2))
    assert len(epoch1) == 5 and len(resumed) == 3
    for a, b in zip(epoch1[2:], resumed):
        for key in ("image", "offset", "index", "label"):
            np.testing.assert_array_equal(a[key], b[key])
    indexes = np.concatenate([b["index"] for b in epoch1])
    np.testing.assert_array_equal(np.sort(indexes), 15 + np.arange(15))
    batch = epoch1[0]
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (3, 224, 224, 3)
    y, x = batch["offset"][0]
    assert any(np.array_equal(batch["image"][0], image[y:y + 224, x:x + 224])
               for image, _ in stored_images(config))


@pytest.mark.parametrize("store_format, data", [
    ("jpeg", {}), ("raw", {"validation_examples": 4, "max_train_examples": 9})])
def test_the_store_read_a_batch_at_a_time_gives_the_batches_of_tfds_per_example_path(
        folder, tmp_path, store_format, data):
    """Training reads the store's records itself and parses a batch per call: the same
    batches (examples, crops, corners, indexes, labels) as TFDS's per-example reading with
    the per-example preprocessing, also for a validation hold-out and a subset."""
    config = folder_config(folder, tmp_path, store_format=store_format, shuffle_buffer=4, **data)
    batched = input_pipeline.create_pipeline(config)

    class OneAtATime:
        """The same preprocessing without its batched reading."""

        def __getattr__(self, name):
            if name in ("records", "train_batch"):
                raise AttributeError(name)
            return getattr(batched.preprocessing, name)

    per_example = pipeline_lib.Pipeline(config, OneAtATime(), batched.builder,
                                        sources.info(config.data.dataset))
    assert batched._trains_in_batches and not per_example._trains_in_batches
    assert batched.num_train == per_example.num_train
    for epoch in (0, 1):
        ours, reference = list(batched.train_batches(epoch)), list(per_example.train_batches(epoch))
        assert len(ours) == len(reference) == batched.steps_per_epoch > 0
        for a, b in zip(ours, reference):
            assert set(a) == set(b) == {"image", "offset", "index", "label"}
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])


def test_a_dispatcher_and_two_workers_deliver_each_example_of_an_epoch_once():
    """tf.data service on 127.0.0.1: every element of the epoch exactly once, split
    between two workers."""
    from alexnet_jax import data_service
    dispatcher = data_service.start("dispatcher", 0)
    address = dispatcher.target.split("://")[1]
    workers = [data_service.start("worker", 0, address) for _ in range(2)]
    try:
        ds = pipeline_lib.distributed(tf.data.Dataset.range(200).map(lambda i: i * 3),
                                      dispatcher.target, "epoch-once")
        received = sorted(int(v) for v in ds.as_numpy_iterator())
        assert received == [3 * i for i in range(200)]
    finally:
        for server in workers + [dispatcher]:
            server.stop()


def test_a_corrupt_source_image_is_left_out_of_the_store_and_counted(tmp_path, capsys):
    root = tmp_path / "images"
    write_folder(root, per_class=2)
    broken = root / "train" / "class1" / "broken.jpg"
    data = (root / "train" / "class1" / "2.jpg").read_bytes()
    broken.write_bytes(data[:len(data) // 3])
    config = folder_config(root, tmp_path / "data")
    store.prepare(config.data, progress=False)
    assert "1 of the 7 train images read could not be decoded" in capsys.readouterr().out
    assert len(stored_images(config)) == 6
