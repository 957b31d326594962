"""The TFDS input pipelines: real Fashion-MNIST files, mock data, determinism, full evaluation."""
import os

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax import input_pipeline  # noqa: E402
from alexnet_jax.input_pipeline import sources  # noqa: E402
from alexnet_jax.input_pipeline.preprocess import augment, small_images  # noqa: E402
from alexnet_jax.training.config_base import base_config  # noqa: E402
from support import DATA_DIR, HAVE_FASHION_MNIST, REPO  # noqa: E402

needs_fashion_mnist = pytest.mark.skipif(
    not HAVE_FASHION_MNIST, reason="Fashion-MNIST files absent: run `make data` to fetch them")


def small_config(dataset="fashion_mnist", data_dir=DATA_DIR, train=600, test=250, batch=64):
    config = base_config()
    config.data.dataset = dataset
    config.data.data_dir = data_dir
    config.data.max_train_examples = train
    config.data.max_test_examples = test
    config.data.shuffle_buffer = 1000
    config.batch_size = batch
    return config


def raw_test_split():
    folder = os.path.join(DATA_DIR, "fashion-mnist")
    return (sources.read_idx(os.path.join(folder, "t10k-images-idx3-ubyte.gz")),
            sources.read_idx(os.path.join(folder, "t10k-labels-idx1-ubyte.gz")))


def as_keys(images, labels):
    """Each example as bytes (pixels then label), for comparing datasets as multisets."""
    pixels = np.rint(images.reshape(len(images), -1) * 0.3530 * 255 + 0.2860 * 255).astype(np.uint8)
    return sorted(p.tobytes() + bytes([int(label)]) for p, label in zip(pixels, labels))


@needs_fashion_mnist
def test_fashion_mnist_is_read_through_tfds_from_the_debian_files():
    pipeline = input_pipeline.create_pipeline(small_config(test=0))
    assert pipeline.builder.info.splits["train"].num_examples == 60_000
    assert pipeline.builder.info.splits["test"].num_examples == 10_000
    batches = list(pipeline.eval_batches(5000))
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    raw_images, raw_labels = raw_test_split()
    # TFDS stores examples in its own order; as a multiset the test split is the raw file's.
    assert as_keys(images, labels) == sorted(
        img.tobytes() + bytes([int(label)]) for img, label in zip(raw_images, raw_labels))


@needs_fashion_mnist
def test_evaluation_sees_every_test_example_exactly_once():
    pipeline = input_pipeline.create_pipeline(small_config(test=250))
    batches = list(pipeline.eval_batches(100))
    assert [b["image"].shape[0] for b in batches] == [100, 100, 100]
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 250 and mask[:250].all() and not mask[250:].any()
    images = np.concatenate([b["image"] for b in batches])[:250]
    labels = np.concatenate([b["label"] for b in batches])[:250]
    keys = as_keys(images, labels)
    assert len(set(keys)) == 250  # no example twice
    raw_images, raw_labels = raw_test_split()
    raw = set(img.tobytes() + bytes([int(label)]) for img, label in zip(raw_images, raw_labels))
    assert set(keys) <= raw


def test_train_batches_are_a_function_of_seed_epoch_and_step():
    with tfds.testing.mock_data(num_examples=320):
        pipeline = input_pipeline.create_pipeline(small_config(data_dir="/nonexistent", train=0,
                                                               batch=32))
        epoch0 = list(pipeline.train_batches(epoch=0))
        assert len(epoch0) == pipeline.steps_per_epoch == 10
        again = list(pipeline.train_batches(epoch=0))
        resumed = list(pipeline.train_batches(epoch=0, start_step=7))
        epoch1 = list(pipeline.train_batches(epoch=1))
    for a, b in zip(epoch0, again):
        np.testing.assert_array_equal(a["image"], b["image"])
    assert len(resumed) == 3
    for a, b in zip(epoch0[7:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(epoch0[0]["image"], epoch1[0]["image"])


def test_processes_rows_make_up_the_single_process_batches_exactly():
    """Multi-host: process p holds block p of every global batch, augmentation included,
    so two processes train on exactly the batches of one; evaluation likewise, with every
    process yielding the same number of batches even where its last block is empty."""
    config = small_config(data_dir="/nonexistent", train=0, test=80, batch=32)
    with tfds.testing.mock_data(num_examples=256):
        whole = input_pipeline.create_pipeline(config)
        halves = [input_pipeline.create_pipeline(config, i, 2) for i in range(2)]
        assert halves[0].batch_size == 16
        for joined in zip(whole.train_batches(1), *(h.train_batches(1) for h in halves)):
            single, first, second = joined
            for key in ("image", "label"):
                np.testing.assert_array_equal(single[key],
                                              np.concatenate([first[key], second[key]]))
        # 80 test examples in global batches of 64: block 1 of the second batch is empty.
        single = list(whole.eval_batches(64))
        parts = [list(h.eval_batches(64)) for h in halves]
    assert len(single) == len(parts[0]) == len(parts[1]) == 2
    assert [p["mask"].sum() for p in parts[1]] == [32, 0]
    for s_batch, a, b in zip(single, *parts):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(s_batch[key], np.concatenate([a[key], b[key]]))


def test_cifar10_shapes_under_mock_data():
    with tfds.testing.mock_data(num_examples=64):
        pipeline = input_pipeline.create_pipeline(small_config("cifar10", "/nonexistent", 0, 0, 32))
        batch = next(pipeline.train_batches(0))
    assert batch["image"].shape == (32, 32, 32, 3) and batch["image"].dtype == np.float32


def test_small_images_train_a_batch_per_call_with_each_examples_own_augmentation():
    """``train_batch`` (what the pipeline calls, a batch at a time) gives exactly what
    ``train`` gives each example of the epoch's order: crops and flips included."""
    config = small_config(data_dir="/nonexistent", train=0, batch=16)
    config.data.random_crop_padding, config.data.flip = 2, True
    with tfds.testing.mock_data(num_examples=64):
        pipeline = input_pipeline.create_pipeline(config)
        assert pipeline._trains_in_batches
        batches = list(pipeline.train_batches(epoch=1))
        expected, unaugmented = [], []
        for position, (image, label) in pipeline._shuffled(pipeline._splits["train"], 1):
            index = pipeline._global_index(1, position)
            expected.append((pipeline.preprocessing.train(image, 1, index).numpy(), label))
            unaugmented.append(pipeline.preprocessing.eval(image).numpy())
    assert len(batches) == 4
    images = np.concatenate([b["image"] for b in batches])
    np.testing.assert_array_equal(images, np.stack([image for image, _ in expected]))
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]),
                                  [label for _, label in expected])
    changed = [not np.array_equal(a, b) for a, b in zip(images, unaugmented)]
    assert sum(changed) > len(changed) // 2  # the crops and flips did happen


def test_augmentation_crops_and_flips_statelessly():
    import tensorflow as tf
    image = tf.reshape(tf.range(2 * 3 * 1, dtype=tf.float32), (2, 3, 1))
    flipped = augment.random_flip(image, tf.constant([0, 0], tf.int64))
    assert flipped.shape == image.shape
    seeds = [tf.constant([1, i], tf.int64) for i in range(20)]
    crops = [small_images.random_crop_with_padding(image, 1, s).numpy() for s in seeds]
    assert all(c.shape == (2, 3, 1) for c in crops)
    assert len({c.tobytes() for c in crops}) > 1
    np.testing.assert_array_equal(crops[0],
                                  small_images.random_crop_with_padding(image, 1, seeds[0]))


def test_missing_dataset_says_how_to_fetch_it(tmp_path, monkeypatch):
    config = small_config(data_dir=str(tmp_path))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(input_pipeline.DatasetUnavailableError, match="make data"):
        input_pipeline.load_builder(config.data, allow_download=False)


def test_pad_batch_masks_the_padding():
    batch = {"image": np.ones((3, 2, 2, 1), np.float32), "label": np.array([4, 5, 6])}
    padded = input_pipeline.pad_batch(batch, 5)
    np.testing.assert_array_equal(padded["mask"], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(padded["label"], [4, 5, 6, 0, 0])


@needs_fashion_mnist
def test_a_subset_is_cached_without_tf_data_discarding_a_partial_cache(capfd):
    """With TFDS's own autocache on, take(max_train_examples) left that cache unfinished: tf.data
    warned and threw it away."""
    pipeline = input_pipeline.create_pipeline(small_config(train=600, test=250))
    for epoch in range(2):
        assert sum(1 for _ in pipeline.train_batches(epoch)) == pipeline.steps_per_epoch
    assert "did not fully read the dataset being cached" not in capfd.readouterr().err


def copy_fashion_mnist(tmp_path):
    raw = tmp_path / "data" / "fashion-mnist"
    raw.mkdir(parents=True)
    for name in os.listdir(os.path.join(DATA_DIR, "fashion-mnist")):
        (raw / name).write_bytes(open(os.path.join(DATA_DIR, "fashion-mnist", name), "rb").read())
    return raw


@needs_fashion_mnist
@pytest.mark.parametrize("how", ["truncated", "short"])
def test_a_damaged_idx_file_is_named_with_how_to_fetch_it_and_nothing_is_prepared(tmp_path, how):
    raw = copy_fashion_mnist(tmp_path)
    images = raw / "train-images-idx3-ubyte.gz"
    data = images.read_bytes()
    if how == "truncated":  # a download cut short: the gzip stream ends early
        images.write_bytes(data[:len(data) // 2])
    else:  # a whole gzip file, but of fewer images than its labels
        import gzip
        images.write_bytes(gzip.compress(gzip.decompress(data)[:16 + 28 * 28 * 100]))
    config = small_config(data_dir=str(tmp_path / "data"))
    with pytest.raises(input_pipeline.DatasetUnavailableError) as error:
        input_pipeline.load_builder(config.data, allow_download=False)
    message = str(error.value)
    assert "\n" not in message and "make data" in message
    assert (str(images) in message) if how == "truncated" else ("60000" in message)
    assert not (tmp_path / "data" / "tfds").exists() or not any(
        (tmp_path / "data" / "tfds").rglob("*.tfrecord*"))


def test_what_a_killed_preparation_left_is_removed(tmp_path):
    from tensorflow_datasets.core import constants
    version_dir = tmp_path / "tfds" / "fashion_mnist_idx" / "1.0.0"
    leftover = version_dir.parent / f"{constants.INCOMPLETE_PREFIX}ABC123_1.0.0"
    (leftover / "sub").mkdir(parents=True)
    (leftover / "sub" / "shard").write_bytes(b"half")

    class Builder:
        data_dir = str(version_dir)

    assert sources.remove_half_prepared(Builder()) == [str(leftover)]
    assert not leftover.exists()


@needs_fashion_mnist
def test_a_damaged_record_file_is_named_with_how_to_prepare_it_again(tmp_path, monkeypatch):
    """Bits flipped in a prepared TFRecord file of a split too large to read through before
    training: its CRC fails as it is read, and the error says which file and that deleting
    the prepared directory makes the next run prepare it anew."""
    import shutil

    from alexnet_jax.input_pipeline import pipeline
    monkeypatch.setattr(pipeline, "READ_THROUGH_BYTES", 0)
    tfds_dir = tmp_path / "data" / "tfds"
    shutil.copytree(os.path.join(DATA_DIR, "tfds"), tfds_dir)
    records = sorted(tfds_dir.rglob("*test.tfrecord*"))
    with open(records[0], "r+b") as f:
        f.seek(os.path.getsize(records[0]) // 2)
        f.write(b"\xff\xff\xff\xff")
    pipeline = input_pipeline.create_pipeline(small_config(data_dir=str(tmp_path / "data"),
                                                           test=0))
    with pytest.raises(input_pipeline.DatasetUnavailableError) as error:
        list(pipeline.eval_batches(1000))
    message = str(error.value)
    assert "damaged or missing" in message and "Delete" in message
    assert os.path.basename(records[0]) in message


@needs_fashion_mnist
def test_a_batch_iterator_left_open_at_exit_closes_quietly():
    """A script that stops reading mid-epoch (a benchmark, a notebook) exits without
    "Exception ignored" noise from the iterator's error translation."""
    import subprocess
    import sys
    script = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests']; "
              "from tests.input_pipeline.test_pipeline import small_config; "
              "from alexnet_jax import input_pipeline; "
              "batches = input_pipeline.create_pipeline(small_config()).train_batches(0); "
              "print(next(batches)['image'].shape)")
    done = subprocess.run([sys.executable, "-c", script, REPO], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(64, 28, 28, 1)" in done.stdout
    assert "Exception ignored" not in done.stderr, done.stderr[-2000:]


@needs_fashion_mnist
@pytest.mark.parametrize("damage", ["truncated", "flipped", "missing"])
def test_every_split_is_checked_before_training(tmp_path, damage):
    """The test split truncated, with bits flipped in place, or gone: creating the pipeline
    (before any step) names the split or the file and says to prepare it again."""
    import shutil
    tfds_dir = tmp_path / "data" / "tfds"
    shutil.copytree(os.path.join(DATA_DIR, "tfds"), tfds_dir)
    record = sorted(tfds_dir.rglob("*test.tfrecord*"))[0]
    if damage == "truncated":
        os.truncate(record, os.path.getsize(record) - 100)
    elif damage == "flipped":
        with open(record, "r+b") as f:
            f.seek(os.path.getsize(record) // 2)
            f.write(b"\xff\xff\xff\xff")
    else:
        os.remove(record)
    with pytest.raises(input_pipeline.DatasetUnavailableError,
                       match=r"(test split .* is damaged|damaged or missing \(.*test\.tfrecord).*"
                             r"Delete .* and run again"):
        input_pipeline.create_pipeline(small_config(data_dir=str(tmp_path / "data")))


@needs_fashion_mnist
def test_tfds_shows_its_bars_only_where_the_run_shows_its_own():
    from tensorflow_datasets.core.utils import tqdm_utils
    for shown in (False, True):
        config = small_config()
        config.progress_bar = shown
        input_pipeline.create_pipeline(config)
        assert isinstance(tqdm_utils.tqdm(total=1), tqdm_utils.EmptyTqdm) is not shown
