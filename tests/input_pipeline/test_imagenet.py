"""The paper's ImageNet preprocessing ops against NumPy: crops, flips, colour statistics,
decoding."""
import io

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from alexnet_jax.input_pipeline.preprocess import imagenet as ops  # noqa: E402


def numbered_image(height, width, channels=3):
    return np.arange(height * width * channels, dtype=np.float32).reshape(height, width, channels)


def test_ten_crops_are_the_four_corners_the_centre_and_their_mirrors():
    image = numbered_image(256, 256)
    crops = ops.ten_crops(tf.constant(image)).numpy()
    assert crops.shape == (10, 224, 224, 3)
    expected = [image[:224, :224], image[:224, 32:], image[32:, :224], image[32:, 32:],
                image[16:240, 16:240]]
    expected += [p[:, ::-1] for p in expected]
    for name, got, want in zip(ops.TEN_CROP_NAMES, crops, expected):
        np.testing.assert_array_equal(got, want, err_msg=name)
    np.testing.assert_array_equal(ops.center_crop(tf.constant(image)).numpy(),
                                  crops[ops.CENTER_VIEW])


def test_pca_lighting_noise_has_zero_mean_and_the_eigen_covariance():
    """Over many images: mean 0 and covariance V diag((0.1 lambda)^2) V^T; one offset per
    image, the same at every pixel."""
    image = tf.zeros([4, 4, 3])
    draws = 5000
    seeds = tf.stack([tf.zeros(draws, tf.int64), tf.range(draws, dtype=tf.int64)], axis=1)
    lit = tf.map_fn(lambda seed: ops.pca_lighting(image, seed), seeds,
                    fn_output_signature=tf.float32).numpy()
    assert np.all(lit == lit[:, :1, :1, :])  # constant over pixels
    offsets = lit[:, 0, 0, :].astype(np.float64)
    vectors = ops.PCA_EIGENVECTORS.astype(np.float64)
    expected = vectors @ np.diag((0.1 * ops.PCA_EIGENVALUES) ** 2) @ vectors.T
    # Within 4 standard errors of the mean (std / sqrt(draws)); the covariance within 8%
    # of its largest entry (its standard error is ~2%).
    assert np.all(np.abs(offsets.mean(0)) < 4 * np.sqrt(np.diag(expected)) / np.sqrt(draws))
    np.testing.assert_allclose(np.cov(offsets.T), expected, atol=0.08 * expected.max())
    # The alphas themselves: project back onto the eigenvectors.
    alphas = offsets @ vectors / ops.PCA_EIGENVALUES
    np.testing.assert_allclose(alphas.std(0), [0.1, 0.1, 0.1], rtol=0.05)  # 5 standard errors


def encode(image, fmt):
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, quality=95) if fmt == "JPEG" else \
        Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decode_and_center_crop_equals_resize_of_the_central_square(fmt):
    """A 500x375 (width x height) image, ImageNet's typical size: the central 375x375
    square resized to 256x256, whether the JPEG path decodes only that square or not."""
    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8).repeat(32, 0).repeat(32, 1)
    image = smooth[:375, :500]
    data = encode(image, fmt)
    got = ops.decode_and_center_crop(tf.constant(data)).numpy()
    assert got.shape == (256, 256, 3) and got.dtype == np.float32
    full = tf.io.decode_image(data, channels=3).numpy()
    square = full[:, 62:62 + 375].astype(np.float32) / 255.0
    want = tf.image.resize(square, [256, 256], antialias=True).numpy()
    # The same float32 resize kernel on pixels in [0, 1], its taps summed in another
    # order: a few units of 6e-8 each; a crop one pixel off differs by ~1e-2.
    np.testing.assert_allclose(got, want, atol=1e-5)
    if fmt == "PNG":  # lossless: also the original pixels
        np.testing.assert_array_equal(full, image)


def test_random_crop_and_flip_are_stateless_functions_of_the_seed():
    image = tf.constant(numbered_image(256, 256))
    a = ops.random_crop(image, 224, tf.constant([1, 2], tf.int64)).numpy()
    b = ops.random_crop(image, 224, tf.constant([1, 2], tf.int64)).numpy()
    c = ops.random_crop(image, 224, tf.constant([1, 3], tf.int64)).numpy()
    np.testing.assert_array_equal(a, b)
    assert a.shape == (224, 224, 3) and not np.array_equal(a, c)
    # A crop is a contiguous window of the image.
    top, left = np.argwhere(numbered_image(256, 256)[..., 0] == a[0, 0, 0])[0]
    np.testing.assert_array_equal(a, numbered_image(256, 256)[top:top + 224, left:left + 224])
    flips = {ops.random_flip(image, tf.constant([0, s], tf.int64)).numpy()[0, 0, 0]
             for s in range(16)}
    assert flips == {0.0, 255.0 * 3}  # both the image and its mirror occur


# --- the pipeline: image folders, corrupt files, mock ImageNet end to end ---------------

def write_image_folder(root, per_class=3, corrupt=0):
    """train/ and val/ with 3 classes; class c's images are flat grey 60 c + 20, so the
    label of every decoded image can be checked from its pixels."""
    from PIL import Image
    for split in ("train", "val"):
        for c, name in enumerate(("ant", "bee", "cat")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(np.full((75, 100, 3), 60 * c + 20, np.uint8)).save(
                    folder / f"{i}.jpg", quality=95)
        for i in range(corrupt):
            data = (root / split / "bee" / "0.jpg").read_bytes()
            (root / split / "bee" / f"broken{i}.jpg").write_bytes(data[:len(data) // 3])


def folder_config(root, tmp_path, **data):
    from alexnet_jax.training.config_base import base_config
    config = base_config()
    config.data.dataset = "image_folder"
    config.data.image_folder = str(root)
    config.data.data_dir = str(tmp_path / "data")
    config.data.mean_images = 100
    config.data.pca_lighting = False
    config.data.store = "source"  # the full-size images, augmented on the host
    config.batch_size = 3
    for key, value in data.items():
        config.data[key] = value
    return config


def test_image_folder_labels_follow_the_folders_and_the_mean_image_is_stored(tmp_path):
    from alexnet_jax import input_pipeline
    write_image_folder(tmp_path / "images")
    config = folder_config(tmp_path / "images", tmp_path, mean="channel")
    pipeline = input_pipeline.create_pipeline(config)
    assert (pipeline.num_classes, pipeline.num_train, pipeline.num_test) == (3, 9, 9)
    mean = np.load(ops.mean_path(config.data, pipeline.builder))
    np.testing.assert_allclose(mean, 80 / 255, atol=2 / 255)  # (20 + 80 + 140) / 3
    batches = list(pipeline.eval_batches(9))
    images, labels = batches[0]["image"], batches[0]["label"]
    assert images.shape == (9, 10, 224, 224, 3)
    grey = images[:, ops.CENTER_VIEW].mean((1, 2, 3)) + mean.mean()
    np.testing.assert_allclose(grey, (60 * labels + 20) / 255, atol=2 / 255)
    for batch in pipeline.train_batches(0):
        grey = batch["image"].mean((1, 2, 3)) + mean.mean()
        np.testing.assert_allclose(grey, (60 * batch["label"] + 20) / 255, atol=2 / 255)


def test_corrupt_images_are_counted_and_skipped_or_fail_clearly(tmp_path, capsys):
    from alexnet_jax import input_pipeline
    write_image_folder(tmp_path / "images", corrupt=2)
    config = folder_config(tmp_path / "images", tmp_path, ten_crop=False)
    pipeline = input_pipeline.create_pipeline(config)
    assert pipeline.num_test == 11
    batches = list(pipeline.eval_batches(6))
    assert sum(b["mask"].sum() for b in batches) == 9  # every readable image, once
    assert "2 of this process's 11 test images could not be read" in capsys.readouterr().out
    assert len(list(pipeline.train_batches(0))) == pipeline.steps_per_epoch == 3
    config.data.corrupt_images = "fail"
    strict = input_pipeline.create_pipeline(config)
    with pytest.raises(input_pipeline.DatasetUnavailableError, match="corrupt_images=skip"):
        list(strict.eval_batches(6))


def test_missing_imagenet_says_where_the_tar_files_go(tmp_path):
    from alexnet_jax import input_pipeline
    config = folder_config(tmp_path, tmp_path)
    config.data.dataset = "imagenet2012"
    with pytest.raises(input_pipeline.DatasetUnavailableError,
                       match=r"ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
                             r".*downloads/manual"):
        input_pipeline.create_pipeline(config)


def shrink(config, data_dir, train=8, test=4, batch=4):
    config.data.data_dir = str(data_dir)
    config.data.max_train_examples, config.data.max_test_examples = train, test
    config.data.mean_images, config.data.shuffle_buffer = 8, 8
    config.batch_size, config.eval_batch_size, config.num_epochs = batch, batch, 1
    config.progress_bar, config.checkpoint.async_save = False, False
    return config


@pytest.mark.long
def test_paper_experiment_runs_end_to_end_on_mock_imagenet_from_the_full_size_images(tmp_path):
    """The experiment's own config through the real trainer, the full-size images decoded
    and augmented on the host (data.store=source), on TFDS's mock ImageNet: a batch of 4
    for 2 steps; evaluation reports the 10-patch figures."""
    import importlib
    import json

    tfds = pytest.importorskip("tensorflow_datasets")
    from alexnet_jax.training import experiment
    config = shrink(importlib.import_module("experiments.paper_imagenet").get_config(),
                    tmp_path / "data")
    config.data.store = "source"
    with tfds.testing.mock_data(num_examples=8):
        summary = experiment.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["steps"] == 2 and summary["test_examples"] == 4
    for key in ("test_top1_error", "test_top5_error", "test_10crop_top1_error",
                "test_10crop_top5_error"):
        assert 0.0 <= summary[key] <= 1.0
    assert json.load(open(tmp_path / "run" / "summary.json"))["test_10crop_loss"] > 0


@pytest.mark.long
def test_one_tower_experiment_prepares_its_store_and_trains_from_it(tmp_path):
    """The default path for ImageNet-style data on an image folder: the first run prepares
    the 256x256 store, trains with the augmentation in the jitted step, and evaluates the
    10 patches cut on the device."""
    import importlib

    from alexnet_jax.input_pipeline import store
    from alexnet_jax.training import experiment
    write_image_folder(tmp_path / "images", per_class=3)
    config = importlib.import_module("experiments.one_tower_imagenet").get_config()
    config = shrink(config, tmp_path / "data", train=9, test=6, batch=3)
    config.data.dataset, config.data.image_folder = "image_folder", str(tmp_path / "images")
    summary = experiment.train_and_evaluate(config, str(tmp_path / "run"))
    assert store.is_prepared(config.data)
    assert summary["steps"] == 3 and summary["test_examples"] == 6
    assert 0.0 <= summary["test_10crop_top1_error"] <= 1.0
