"""Every config key an experiment can set, with its default.

Experiment files in ``experiments/`` start from ``base_config()`` and change a few
fields, so every experiment has the same keys and a mistyped key is an error (the
config is locked when loaded).  Keys that default to the model variant's or the
dataset's value are typed placeholders: unset means "take it from there".
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_epochs = 90
    config.batch_size = 128  # global, across all devices and hosts
    config.eval_batch_size = 500
    config.parallelism = "single"  # single | model | data | data_model | auto (parallel.py)
    config.num_devices = 0  # devices to use, across all processes; 0: all
    config.log_every_steps = 50
    config.eval_every_epochs = 1
    config.progress_bar = True
    config.restore_from = ""  # another run's workdir or checkpoint: start from its weights
    config.eval_only = False  # evaluate the latest (or restore_from) checkpoint, write eval.json

    config.model = ml_collections.ConfigDict()
    config.model.variant = "paper"  # paper | one_tower | tf_benchmark | small
    config.model.norm = "lrn"  # lrn | batchnorm | none
    config.model.norm_position = "after_relu"  # after_relu | before_relu
    config.model.pool = "overlapping"  # overlapping (3/2) | non_overlapping (2/2)
    config.model.activation = "relu"  # relu | tanh
    config.model.towers = config_dict.placeholder(int)  # default: the variant's
    config.model.dropout_rate = config_dict.placeholder(float)
    config.model.num_classes = config_dict.placeholder(int)  # default: the dataset's
    config.model.input_shape = config_dict.placeholder(tuple)  # default: the dataset's
    config.model.init = config_dict.placeholder(str)  # paper | scaled
    config.model.dtype = "float32"  # computation: float32 | bfloat16; params stay float32
    config.model.implementation = "auto"  # auto | plain | im2col: the layers (kernels/)
    config.model.sync_batch_stats = True  # BatchNorm statistics over the global batch

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "fashion_mnist"  # fashion_mnist | cifar10 | imagenet2012 | image_folder
    config.data.data_dir = "data"
    config.data.image_folder = ""  # image_folder: a directory with train/ and val/ class folders
    config.data.download = True  # where local files are absent, let TFDS download (online only)
    config.data.random_crop_padding = 2  # pixels of zero padding before a random crop
    config.data.flip = True  # random horizontal flips when training
    config.data.shuffle_buffer = 60_000
    config.data.cache = True
    config.data.max_train_examples = 0  # >0: use only the first N (tests, smoke runs)
    config.data.max_test_examples = 0
    config.data.corrupt_images = "skip"  # skip (counted, with a warning) | fail
    # ImageNet-style data (imagenet2012, image_folder): the paper's preprocessing.
    config.data.pca_lighting = True  # the paper's colour augmentation
    config.data.mean = "pixel"  # pixel: the paper's mean image | channel: one value per channel
    config.data.mean_images = 10_000  # training images the mean is computed from, once
    config.data.ten_crop = True  # evaluation: also the paper's 10 patches, softmax averaged

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 0.01
    config.optim.momentum = 0.9
    config.optim.weight_decay = 0.0005
    config.optim.decay_biases_and_norms = True  # the paper decays every parameter
    config.optim.schedule = "plateau"  # plateau | step | cosine | constant
    config.optim.plateau_factor = 0.1
    config.optim.plateau_patience = 1  # evaluations without improvement before dividing
    config.optim.plateau_min_delta = 0.0  # an improvement smaller than this does not count
    config.optim.plateau_max_reductions = 3
    config.optim.step_epochs = (30, 60, 80)  # schedule=step: divide by 10 at these epochs
    config.optim.warmup_epochs = 0.0  # schedule=cosine: linear warmup first

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 1000  # also saved at the end of every epoch; 0: epochs only
    config.checkpoint.keep = 3  # the last K; the best by test top-1 error is kept apart
    config.checkpoint.async_save = True

    return config
