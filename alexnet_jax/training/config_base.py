"""Every config key an experiment can set, with its default.

Experiment files in ``experiments/`` start from ``base_config()`` and change a few
fields, so every experiment has the same keys and a mistyped key is an error (the
config is locked when loaded).  Keys that default to the model variant's or the
dataset's value are typed placeholders: unset means "take it from there".
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import ml_collections
from ml_collections import config_dict

from alexnet_jax.model import components
from alexnet_jax.runtime.errors import ConfigError
from alexnet_jax.training import objective, optim


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_epochs = 90
    config.batch_size = 128  # global, across all devices and hosts
    config.eval_batch_size = 500
    config.parallelism = "single"  # single | model | data | data_model | auto (layouts.py)
    config.num_devices = 0  # devices to use, across all processes; 0: all
    config.log_every_steps = 50
    config.eval_every_epochs = 1
    config.progress_bar = True
    config.restore_from = ""  # another run's workdir or checkpoint: start from its weights
    config.eval_only = False  # evaluate the latest (or restore_from) checkpoint, write eval.json

    config.model = ml_collections.ConfigDict()
    config.model.variant = "paper"  # a row of model/networks.py's VARIANTS
    config.model.norm = "lrn"  # a name in components.NORMS
    config.model.norm_position = "after_relu"  # after_relu | before_relu
    config.model.pool = "overlapping"  # a name in components.POOLS
    config.model.activation = "relu"  # a name in components.ACTIVATIONS
    config.model.towers = config_dict.placeholder(int)  # default: the variant's
    config.model.dropout_rate = config_dict.placeholder(float)
    config.model.num_classes = config_dict.placeholder(int)  # default: the dataset's
    config.model.input_shape = config_dict.placeholder(tuple)  # default: the dataset's
    config.model.init = config_dict.placeholder(str)  # paper | scaled
    config.model.dtype = "float32"  # computation: float32 | bfloat16; params stay float32
    config.model.implementation = "auto"  # auto | plain | xla | im2col: the layers (layers/)
    config.model.sync_batch_stats = True  # BatchNorm statistics over the global batch
    # Each normalisation's own settings (components.Norm.options), with their defaults.
    for key, default in components.all_norm_options().items():
        config.model[key] = default

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
    # >0: hold out the last N training examples as a validation split, evaluated beside the
    # test split; the plateau policy, "best" and sweeps' choices then read it, never test.
    config.data.validation_examples = 0
    config.data.corrupt_images = "skip"  # skip (counted, with a warning) | fail
    # ImageNet-style data (imagenet2012, image_folder): the paper's preprocessing.
    config.data.pca_lighting = True  # the paper's colour augmentation
    config.data.mean = "pixel"  # pixel: the paper's mean image | channel: one value per channel
    config.data.mean_images = 10_000  # training images the mean is computed from, once
    config.data.ten_crop = True  # evaluation: also the paper's 10 patches, softmax averaged
    # prepared: read the 256x256 store (input_pipeline/store.py), augment on the device;
    # source: decode the full-size images every epoch, augment on the host.
    config.data.store = "prepared"
    config.data.store_format = "jpeg"  # jpeg | raw (uint8, ~196 KB an image)
    config.data.store_quality = 95  # JPEG quality of the store
    config.data.service_address = ""  # tf.data service dispatcher (grpc://HOST:PORT): workers

    config.optim = ml_collections.ConfigDict()
    config.optim.optimizer = "sgd"  # a name in optim.OPTIMIZERS: sgd (the paper's), adamw, lars
    config.optim.learning_rate = 0.01
    # Each optimiser's own settings (optim.OPTIMIZERS' options), with their defaults.
    for key, default in optim.all_optimizer_options().items():
        config.optim[key] = default
    config.optim.weight_decay = 0.0005
    config.optim.decay_biases_and_norms = True  # the paper decays every parameter
    config.optim.schedule = "plateau"  # plateau | step | cosine | linear | constant
    config.optim.plateau_factor = 0.1
    config.optim.plateau_patience = 1  # evaluations without improvement before dividing
    config.optim.plateau_min_delta = 0.0  # an improvement smaller than this does not count
    config.optim.plateau_max_reductions = 3
    config.optim.step_epochs = (30, 60, 80)  # schedule=step: divide by 10 at these epochs
    config.optim.warmup_epochs = 0.0  # schedule=cosine or linear: linear warmup first
    # >1: the gradients of this many steps (batches of batch_size) averaged into one update,
    # as one batch of accumulate_steps x batch_size; the schedule counts updates.
    config.optim.accumulate_steps = 1
    # >0: also keep an exponential moving average of the weights (and BatchNorm's
    # statistics), ema <- ema_decay ema + (1 - ema_decay) weights after every update; each
    # evaluation scores it beside the weights (ema_* metrics).
    config.optim.ema_decay = 0.0

    # The training objective: cross-entropy and its terms (objective.LOSS_TERMS), each off
    # at 0.  Evaluations report the plain cross-entropy.
    config.loss = ml_collections.ConfigDict()
    for key, default in objective.all_term_options().items():
        config.loss[key] = default

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 1000  # also saved at the end of every epoch; 0: epochs only
    # The last K are kept; the best (by validation top-1 error, by test where no validation
    # split is held out) is kept apart.
    config.checkpoint.keep = 3
    config.checkpoint.async_save = True
    # What "best" (and the plateau policy) reads: the weights' selection error, or (with
    # optim.ema_decay) their moving average's: raw | ema.
    config.checkpoint.best_by = "raw"

    return config


# Keys that change how a run is carried out, not what it computes: a run that differs from
# another only in these is the same run (``config_hash``).
UNHASHED_KEYS = ("progress_bar", "checkpoint.async_save", "checkpoint.keep",
                 "checkpoint.every_steps", "data.data_dir", "data.service_address",
                 "config_hash")


def added_keys() -> tuple[str, ...]:
    """Keys added after runs were recorded, whose default computes what those runs did:
    the optimiser's choice and the options of the ones added beside the paper's SGD,
    accumulation, the moving average and what chooses "best" by it, and every objective
    term.  At its default such a key is left out of a run's identity (``config_hash``), so
    that adding it does not make every finished run stale; a new key with such a default
    belongs here (an entry's own options join by themselves)."""
    return ("optim.optimizer", "optim.accumulate_steps", "optim.ema_decay",
            "checkpoint.best_by",
            *(f"optim.{key}" for key in optim.all_optimizer_options() if key != "momentum"),
            *(f"loss.{key}" for key in objective.all_term_options()))


def config_hash(config: Any) -> str:
    """The identity of a run's results: 16 hex digits of the SHA-256 of its resolved config
    (a ConfigDict, or a run's ``config.json`` as a dict) without ``UNHASHED_KEYS``, and
    without the ``added_keys`` that hold their default.

    A key the config does not have takes today's default, so that a key added since a run
    was written (with a default that keeps what runs computed before) leaves its hash as
    it was.  Tuples and lists hash alike (JSON has only lists)."""
    if isinstance(config, ml_collections.ConfigDict):
        config = json.loads(config.to_json_best_effort())
    defaults = json.loads(base_config().to_json_best_effort())
    resolved = with_defaults(defaults, config)
    for key in added_keys():
        section, leaf = key.split(".")
        node = resolved.get(section, {})
        if leaf in node and node[leaf] == defaults[section][leaf]:
            del node[leaf]
            if not node:  # a section of added keys only (loss) goes with them
                del resolved[section]
    for key in UNHASHED_KEYS:
        *parents, leaf = key.split(".")
        node = resolved
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def with_defaults(defaults: dict, given: dict) -> dict:
    """``given`` (a config as JSON) with ``defaults``' values for the keys it lacks."""
    merged = dict(defaults)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            merged[key] = with_defaults(defaults[key], value)
        else:
            merged[key] = value
    return merged


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None,
             process_count: int = 1) -> None:
    """Checks the whole resolved config before any data is read or file written, by
    building what the trainer builds from it where that checks its own values: the
    network (``networks.config_from``: every model setting) and the layout
    (``layouts.plan``: the devices, ``num_devices`` of them, JAX's if None, over
    ``process_count`` hosts, and the batch sizes); and here every other enumerated value,
    count and size, and the images against the network.  Raises ``ConfigError`` naming
    the first problem and its fix."""
    from alexnet_jax import input_pipeline
    from alexnet_jax.model import layers, layouts, networks

    def choice(key: str, valid: tuple) -> None:
        if _get(config, key) not in valid:
            raise ConfigError(f"config.{key}={_get(config, key)!r} is not one of: "
                              f"{', '.join(map(str, valid))}.")

    def at_least(key: str, low: float, what: str = "") -> None:
        value = _get(config, key)
        if not isinstance(value, (int, float)) or value < low:
            raise ConfigError(f"config.{key}={value!r} must be at least {low}{what}.")

    _check_finite(json.loads(config.to_json_best_effort()))
    choice("data.dataset", tuple(input_pipeline.sources.DATASETS))
    model = _network(config, networks, input_pipeline)
    choice("model.implementation", layers.IMPLEMENTATIONS)
    choice("data.corrupt_images", ("skip", "fail"))
    choice("data.mean", ("pixel", "channel"))
    choice("data.store", ("prepared", "source"))
    choice("data.store_format", ("jpeg", "raw"))
    if not 1 <= config.data.store_quality <= 100:
        raise ConfigError(f"config.data.store_quality={config.data.store_quality!r} must be a "
                          "JPEG quality in [1, 100].")
    choice("optim.schedule", optim.SCHEDULES)
    choice("optim.optimizer", tuple(optim.OPTIMIZERS))
    choice("checkpoint.best_by", ("raw", "ema"))
    if not 0.0 <= config.optim.ema_decay < 1.0:
        raise ConfigError(f"config.optim.ema_decay={config.optim.ema_decay!r} must be in [0, 1) "
                          "(0: no moving average).")
    if config.checkpoint.best_by == "ema" and not config.optim.ema_decay:
        raise ConfigError("config.checkpoint.best_by=ema needs a moving average: set "
                          "config.optim.ema_decay, e.g. 0.999.")
    for key in ("num_epochs", "batch_size", "eval_batch_size", "log_every_steps",
                "eval_every_epochs", "checkpoint.keep", "data.shuffle_buffer",
                "data.mean_images", "optim.plateau_patience", "optim.accumulate_steps"):
        at_least(key, 1)
    for key in ("num_devices", "checkpoint.every_steps", "data.max_train_examples",
                "data.max_test_examples", "data.validation_examples", "data.random_crop_padding",
                "optim.plateau_max_reductions", "optim.weight_decay", "optim.plateau_min_delta",
                "optim.warmup_epochs"):
        at_least(key, 0)
    if config.optim.learning_rate <= 0:
        raise ConfigError(f"config.optim.learning_rate={config.optim.learning_rate!r} must be "
                          "positive.")
    try:
        optim.check_options(config.optim)
        objective.check_terms(config.loss)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if not 0.0 < config.optim.plateau_factor < 1.0:
        raise ConfigError(f"config.optim.plateau_factor={config.optim.plateau_factor!r} must "
                          "be in (0, 1): the learning rate is multiplied by it.")
    if config.optim.schedule in optim.DECAYS_TO_ZERO and \
            config.optim.warmup_epochs >= config.num_epochs:
        raise ConfigError(f"config.optim.warmup_epochs={config.optim.warmup_epochs} leaves no "
                          f"epoch of the {config.num_epochs} for the {config.optim.schedule} "
                          "decay; lower it.")
    if config.data.dataset == "image_folder" and not config.data.image_folder:
        raise ConfigError("config.data.dataset=image_folder needs config.data.image_folder: a "
                          "directory with train/<class>/<image> and val/<class>/<image>.")
    _validate_layout(config, model.towers, num_devices, process_count, layouts)


def _check_finite(tree: dict, prefix: str = "config.") -> None:
    """Every number of the config is finite (a NaN or infinite rate passes every bound)."""
    for key, value in tree.items():
        if isinstance(value, dict):
            _check_finite(value, f"{prefix}{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{key}={value!r} must be a finite number.")


def _get(config: ml_collections.ConfigDict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def _network(config, networks, input_pipeline) -> Any:
    """The network the trainer builds (every model setting checked by building it), and the
    images (the dataset's, or model.input_shape) against its smallest input."""
    images = tuple(input_pipeline.info(config.data.dataset).image_shape)
    shape = config.model.input_shape or images
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"config.model.input_shape={tuple(shape)!r} must be three positive "
                          "sizes: (height, width, channels).")
    if tuple(shape) != images:
        raise ConfigError(f"config.model.input_shape={tuple(shape)!r}, but {config.data.dataset} "
                          f"gives the network images of {images!r}: leave it unset, or set it "
                          "to that shape.")
    try:
        model = networks.config_from(config.model, tuple(shape), 10)
    except ValueError as error:
        raise ConfigError(f"config.model.{error}") from None
    smallest = model.smallest_input()
    if min(shape[:2]) >= smallest:
        return model
    fits = [name for name in networks.VARIANTS if networks.model_config(
        name, input_shape=tuple(shape)).smallest_input() <= min(shape[:2])]
    suggestion = (f"use config.model.variant={fits[0]}" if fits else
                  "resize the images")
    raise ConfigError(
        f"config.model.variant={config.model.variant} needs images of at least {smallest}x"
        f"{smallest} pixels, but {config.data.dataset} gives {shape[0]}x{shape[1]}: "
        f"{suggestion}.")


def _validate_layout(config, towers, num_devices, process_count, layouts) -> None:
    """The layout ``layouts.create`` will build, and the batch sizes against it."""
    import jax
    available = jax.device_count() if num_devices is None else num_devices
    if config.num_devices > available:
        raise ConfigError(f"config.num_devices={config.num_devices}, but only {available} "
                          "device(s) are present.")
    try:
        shape = layouts.plan(config.parallelism, towers, config.num_devices or available,
                              process_count)
        for key in ("batch_size", "eval_batch_size"):
            shape.check_batch(config[key], f"config.{key}", process_count)
    except layouts.LayoutError as error:  # its messages name parallelism or the batch
        message = str(error)
        raise ConfigError(message if message.startswith("config.") else
                          f"config.{message}" if message.startswith("parallelism=") else
                          f"config.parallelism: {message}") from None
