"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) as Flax modules.

The network is written once, as one ``Tower``: everything one of the paper's two GPUs
computed.  Towers exchange activations through collectives on the named axis
``"model"`` at exactly the places the paper's Figure 2 shows:

* conv3 reads both towers' pooled conv2 maps  (``all_gather``),
* every hidden fc layer (fc6, fc7) reads both towers' previous layer (``all_gather``),
* the output layer reads both towers' fc7: each tower multiplies its own fc7 by its
  rows of the output matrix and the partial logits are summed (``psum``), which is the
  same product as gathering fc7 first, with a quarter of the traffic.

``AlexNet`` is the whole network in one program: its towers side by side (``nn.vmap``
over "model"; a one-tower network runs its tower as it is) and the output bias they
share.  Every variable a tower holds gets a leading tower axis, marked with the logical
axis name ``TOWER_AXIS`` where that axis is created; ``layouts.py`` reads the mark to
put each tower on its own device, where ``Tower`` alone runs: the paper's two-GPU split.

The layers come in as a ``layers.Layers`` value, chosen for the platform by
``layers.select``; the parameters do not depend on it.  The interchangeable parts
(normalisation, activation, pooling) are entries of ``components.py``'s registries.

Randomness does not depend on the layout: the dropout mask of example i in tower t is
drawn from ``fold_in(fold_in(key, t), i)`` with i the example's index in the global
batch, so one device, towers on devices and any number of data replicas draw
identical masks.  Local response normalisation never crosses towers: on the paper's
GPUs each one normalised its own maps.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import meta

from alexnet_jax.model import components
from alexnet_jax.model.layers import PLAIN, Layers

MODEL_AXIS = "model"  # the towers' named axis, which their collectives cross
TOWER_AXIS = "tower"  # the logical name of the leading axis of every variable a tower holds

NORM_POSITIONS = ("after_relu", "before_relu")
INITS = ("paper", "scaled")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# The layers the paper gives a bias of 1 ("to accelerate the early stages of
# learning by providing the ReLUs with positive inputs"); every other bias is 0.
PAPER_UNIT_BIAS_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")
# The layers whose output the paper normalises (LRN after the ReLU of conv1 and conv2).
NORMALISED_LAYERS = ("conv1", "conv2")
# The layers followed by max-pooling.
POOLED_LAYERS = ("conv1", "conv2", "conv5")

# cuda-convnet counts conv1's output positions with a ceiling, so its last 11x11 window
# hangs 3 px over the bottom and right edges of a 224 image and reads zeros: 224 -> 55,
# as in the paper's Figure 2.
CUDA_CONVNET_CONV1_PADDING = ((0, 3), (0, 3))


def check_choice(kind: str, value: Any, valid: Sequence[Any]) -> None:
    if value not in valid:
        raise ValueError(f"{kind}={value!r} is not one of: {', '.join(map(str, valid))}.")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that defines the network: a row of ``VARIANTS`` with the knobs applied.

    Widths are per tower, so ``towers=1`` on the paper's row is its one-GPU ablation, a
    single tower of half the kernels.  ``lrn`` is (k, n, alpha, beta).  ``norm``,
    ``activation`` and ``pool`` name entries of ``components.py``'s registries;
    ``norm_options`` holds the normalisation's own settings ((key, value) pairs, see
    ``components.Norm.options``).  Parameters are always float32; ``dtype`` is the
    computation's.
    """

    input_shape: tuple[int, int, int]
    conv_channels: tuple[int, ...]  # per tower, conv1 to conv5
    conv_kernels: tuple[int, ...]  # square kernels' sizes
    conv_strides: tuple[int, ...]
    conv_paddings: tuple[Any, ...]  # each "SAME", "VALID" or ((top, bottom), (left, right))
    hidden_units: tuple[int, ...]
    towers: int
    num_classes: int
    lrn: tuple[float, int, float, float] = (2.0, 5, 1e-4, 0.75)
    norm: str = "lrn"
    norm_options: tuple[tuple[str, Any], ...] = ()
    norm_position: str = "after_relu"
    pool: str = "overlapping"
    activation: str = "relu"
    dropout_rate: float = 0.5
    init: str = "paper"
    dtype: str = "float32"

    def __post_init__(self):
        components.NORMS.check(self.norm)
        check_choice("norm_position", self.norm_position, NORM_POSITIONS)
        components.POOLS.check(self.pool)
        components.ACTIVATIONS.check(self.activation)
        check_choice("init", self.init, INITS)
        check_choice("dtype", self.dtype, tuple(DTYPES))
        layers = {len(self.conv_channels), len(self.conv_kernels), len(self.conv_strides),
                  len(self.conv_paddings)}
        if len(layers) != 1:
            raise ValueError("conv_channels, conv_kernels, conv_strides and conv_paddings must "
                             "give one value per convolution layer each.")
        if self.towers < 1:
            raise ValueError(f"towers={self.towers!r} must be at least 1.")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate={self.dropout_rate!r} must be in [0, 1).")
        if self.num_classes < 2:
            raise ValueError(f"num_classes={self.num_classes!r} must be at least 2.")
        norm = components.NORMS[self.norm]
        given = dict(self.norm_options)
        unknown = set(given) - set(norm.options)
        if unknown:
            raise ValueError(f"norm={self.norm} has no setting(s) {sorted(unknown)}; its "
                             f"settings are: {', '.join(norm.options) or 'none'}.")
        resolved = tuple((key, given.get(key, default)) for key, default in norm.options.items())
        norm.check(dict(resolved))
        object.__setattr__(self, "norm_options", resolved)  # the defaults filled in

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def pooled_size(self, size: int) -> int:
        """The height (or width) of pool5's maps for an input ``size`` pixels high (or wide):
        0 where the input is too small for the network."""
        pooling = components.POOLS[self.pool]
        for i, (kernel, stride, padding) in enumerate(
                zip(self.conv_kernels, self.conv_strides, self.conv_paddings), start=1):
            low, high = _padding_pair(padding, size, kernel, stride)
            size = max(0, (size + low + high - kernel) // stride + 1)
            if f"conv{i}" in POOLED_LAYERS:
                size = max(0, (size - pooling.window) // pooling.stride + 1)
        return size

    def smallest_input(self) -> int:
        """The smallest height and width this network takes (pool5 at least 1x1)."""
        size = 1
        while self.pooled_size(size) < 1:
            size += 1
        return size


def _padding_pair(padding: Any, size: int, kernel: int, stride: int) -> tuple[int, int]:
    if padding == "SAME":
        out = -(-size // stride)
        total = max(0, (out - 1) * stride + kernel - size)
        return total // 2, total - total // 2
    if padding == "VALID":
        return 0, 0
    return tuple(padding[0])


VARIANTS: dict[str, dict[str, Any]] = {
    # The paper's network: 2 x (48, 128, 192, 192, 128) conv maps, 2 x (2048, 2048) fc units.
    "paper": dict(input_shape=(224, 224, 3), conv_channels=(48, 128, 192, 192, 128),
                  conv_kernels=(11, 5, 3, 3, 3), conv_strides=(4, 1, 1, 1, 1),
                  conv_paddings=(CUDA_CONVNET_CONV1_PADDING, *["SAME"] * 4),
                  hidden_units=(2048, 2048),
                  towers=2, num_classes=1000, lrn=(2.0, 5, 1e-4, 0.75), dropout_rate=0.5,
                  init="paper"),
    # One tower with the widths of torchvision / "One weird trick" (Krizhevsky 2014).
    "one_tower": dict(input_shape=(224, 224, 3), conv_channels=(64, 192, 384, 256, 256),
                      conv_kernels=(11, 5, 3, 3, 3), conv_strides=(4, 1, 1, 1, 1),
                      conv_paddings=(CUDA_CONVNET_CONV1_PADDING, *["SAME"] * 4),
                      hidden_units=(4096, 4096),
                      towers=1, num_classes=1000, lrn=(2.0, 5, 1e-4, 0.75), dropout_rate=0.5,
                      init="paper"),
    # The seed's TensorFlow benchmark network, layer for layer: SAME padding (conv1
    # gives 56x56), tf.nn.lrn(depth_radius=4, bias=1, alpha=1e-3/9, beta=0.75), a ReLU
    # after its 1000-unit layer, then a 1000 -> 10 softmax layer; no dropout.
    "tf_benchmark": dict(input_shape=(224, 224, 3), conv_channels=(64, 192, 384, 256, 256),
                         conv_kernels=(11, 5, 3, 3, 3), conv_strides=(4, 1, 1, 1, 1),
                         conv_paddings=("SAME",) * 5,
                         hidden_units=(4096, 4096, 1000), towers=1, num_classes=10,
                         lrn=(1.0, 9, 1e-3 / 9, 0.75), dropout_rate=0.0, init="scaled"),
    # The paper's structure scaled for 28-32 px images and 10 classes (28 -> pools 13, 6, 2).
    "small": dict(input_shape=(28, 28, 1), conv_channels=(24, 48, 64, 64, 48),
                  conv_kernels=(5, 3, 3, 3, 3), conv_strides=(1,) * 5, conv_paddings=("SAME",) * 5,
                  hidden_units=(256, 256), towers=2, num_classes=10,
                  lrn=(2.0, 5, 1e-4, 0.75), dropout_rate=0.5, init="scaled"),
}
KNOBS = ("input_shape", "num_classes", "towers", "norm", "norm_position", "pool",
         "activation", "dropout_rate", "init", "dtype")


def model_config(variant: str, **knobs: Any) -> ModelConfig:
    """A row of ``VARIANTS`` with ``knobs`` (``KNOBS``, or any field) overriding it; None
    keeps the row's value."""
    check_choice("variant", variant, tuple(VARIANTS))
    fields = dict(VARIANTS[variant])
    unknown = set(knobs) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise ValueError(f"Unknown model setting(s) {sorted(unknown)}.")
    fields.update({k: _frozen(v) for k, v in knobs.items() if v is not None})
    return ModelConfig(**fields)


def config_from(model: Any, input_shape: Sequence[int] | None = None,
                num_classes: int | None = None) -> ModelConfig:
    """The ``ModelConfig`` an experiment's ``config.model`` describes, for data of
    ``input_shape`` and ``num_classes`` where the config leaves those unset."""
    knobs = {k: model.get(k) for k in KNOBS}
    knobs["norm_options"] = components.norm_options(model.get("norm", "lrn"), model)
    if knobs["input_shape"] is None and input_shape is not None:
        knobs["input_shape"] = tuple(input_shape)
    if knobs["num_classes"] is None:
        knobs["num_classes"] = num_classes
    return model_config(model.variant, **knobs)


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


# --- the layers ----------------------------------------------------------------------

def norm_site(config: ModelConfig, index: int, layers: Layers = PLAIN,
              train: bool = False, batch_norm_axis: str | None = None) -> components.NormSite:
    """Where conv``index``'s normalisation is built: one tower's maps and the settings."""
    return components.NormSite(index=index, channels=config.conv_channels[index - 1],
                               train=train, dtype=DTYPES[config.dtype], lrn=config.lrn,
                               lrn_op=layers.lrn, batch_norm_axis=batch_norm_axis,
                               options=dict(config.norm_options))


def norm_facts(config: ModelConfig) -> dict[str, dict[str, Any]]:
    """What each normalisation layer resolved from its settings, by layer name (a
    group count fitted to the tower's channels, say); empty where there is nothing."""
    norm = components.NORMS[config.norm]
    facts = {}
    for layer in NORMALISED_LAYERS:
        index = int(layer[-1])
        found = norm.facts(norm_site(config, index))
        if found:
            facts[f"{norm.layer}{index}"] = found
    return facts


def _kernel_init(init: str, scaled_gain: float) -> Callable:
    if init == "paper":
        return nn.initializers.normal(stddev=0.01)
    return nn.initializers.variance_scaling(scaled_gain, "fan_in", "truncated_normal")


def _bias_init(init: str, layer: str) -> Callable:
    if init == "paper" and layer in PAPER_UNIT_BIAS_LAYERS:
        return nn.initializers.ones
    return nn.initializers.zeros


class Tower(nn.Module):
    """One tower of AlexNet: everything one of the paper's GPUs computed.

    Communicates over ``model_axis`` (None for a lone tower, which crosses nothing) and,
    for BatchNorm statistics when training, ``batch_norm_axis``.  Returns the full
    logits (summed over towers), without the output bias.
    """

    config: ModelConfig
    layers: Layers = PLAIN
    model_axis: str | None = MODEL_AXIS
    batch_norm_axis: str | None = None

    def _record(self, stage: str, x: jax.Array) -> jax.Array:
        """Keeps each stage's output as intermediates[stage + "_out"] for summaries and figures."""
        self.sow("intermediates", f"{stage}_out", x)
        return x

    def _exchange(self, x: jax.Array) -> jax.Array:
        """Concatenates every tower's activations along channels: a tower crossing."""
        if self.model_axis is None:
            return x
        return jax.lax.all_gather(x, self.model_axis, axis=x.ndim - 1, tiled=True)

    def _normalise(self, x: jax.Array, index: int, train: bool) -> jax.Array:
        norm = components.NORMS[self.config.norm]
        site = norm_site(self.config, index, self.layers, train, self.batch_norm_axis)
        layer = norm.build(site, f"{norm.layer}{index}")
        return x if layer is None else layer(x)

    def _dropout(self, x: jax.Array, layer: int, key: jax.Array | None,
                 example_offset: jax.Array | int) -> jax.Array:
        """Dropout with a mask per (tower, layer, global example index): see the module doc."""
        if key is None or self.config.dropout_rate == 0.0:
            return x
        tower = 0 if self.model_axis is None else jax.lax.axis_index(self.model_axis)
        key = jax.random.fold_in(jax.random.fold_in(key, tower), layer)
        keep_rate = 1.0 - self.config.dropout_rate
        examples = example_offset + jnp.arange(x.shape[0])
        keep = jax.vmap(lambda i: jax.random.bernoulli(
            jax.random.fold_in(key, i), keep_rate, x.shape[1:]))(examples)
        return jnp.where(keep, x / keep_rate, 0.0).astype(x.dtype)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, dropout_key: jax.Array | None = None,
                 example_offset: jax.Array | int = 0) -> jax.Array:
        """``dropout_key``: None for no dropout; ``example_offset``: the global batch index of
        ``x``'s first row (non-zero on data-parallel replicas)."""
        config, layers = self.config, self.layers
        dtype = DTYPES[config.dtype]
        activation = components.ACTIVATIONS[config.activation]
        pooling = components.POOLS[config.pool]
        kernel_init = _kernel_init(config.init, activation.gain)
        x = x.astype(dtype)
        for i, (channels, size, step, padding) in enumerate(
                zip(config.conv_channels, config.conv_kernels, config.conv_strides,
                    config.conv_paddings), start=1):
            layer = f"conv{i}"
            if i == 3:
                x = self._exchange(x)
            x = layers.conv(channels, (size, size), strides=(step, step), padding=padding,
                            dtype=dtype,
                            kernel_init=kernel_init, bias_init=_bias_init(config.init, layer),
                            name=layer)(x)
            normalised = layer in NORMALISED_LAYERS
            if normalised and config.norm_position == "before_relu":
                x = self._record(f"norm{i}", self._normalise(x, i, train))
            x = self._record(layer, activation.fn(x))
            if normalised and config.norm_position == "after_relu":
                x = self._record(f"norm{i}", self._normalise(x, i, train))
            if layer in POOLED_LAYERS:
                with jax.named_scope(f"pool{i}"):  # names its ops for profiles
                    x = self._record(f"pool{i}", layers.max_pool(x, pooling.window,
                                                                 pooling.stride))
        for i, units in enumerate(config.hidden_units, start=6):
            layer = f"fc{i}"
            # Gathering pool5's maps before flattening keeps fc6's rows in the (h, w, c)
            # order of a one-tower network, so the towers' weights concatenate into its.
            x = self._exchange(x)
            x = x.reshape(x.shape[0], -1)
            x = layers.dense(units, dtype=dtype, kernel_init=kernel_init,
                             bias_init=_bias_init(config.init, layer), name=layer)(x)
            x = activation.fn(x)
            x = self._record(layer, self._dropout(x, i, dropout_key if train else None,
                                                  example_offset))
        partial_logits = layers.dense(config.num_classes, use_bias=False, dtype=dtype,
                                      kernel_init=kernel_init, name="output")(x)
        partial_logits = partial_logits.astype(jnp.float32)
        if self.model_axis is None:
            return partial_logits
        return jax.lax.psum(partial_logits, self.model_axis)


# --- holding the towers --------------------------------------------------------------

TOWER_COLLECTIONS = ("params", "batch_stats", "intermediates")
MARKED_COLLECTIONS = ("params", "batch_stats")


def _mark_tower_axis(variables: Any) -> Any:
    """Boxes each variable with its leading axis named ``TOWER_AXIS`` (the rest unnamed)."""
    return jax.tree.map(
        lambda v: nn.LogicallyPartitioned(v, (TOWER_AXIS,) + (None,) * (v.ndim - 1)), variables)


def _marked(module: Any, initializing: bool) -> Any:
    """``module`` whose variables, as they are created, carry the tower axis's mark."""
    return nn.map_variables(module, MARKED_COLLECTIONS, trans_in_fn=meta.unbox,
                            trans_out_fn=_mark_tower_axis if initializing else (lambda v: v),
                            mutable=True)


def towers_side_by_side(count: int, initializing: bool) -> Any:
    """``count`` Towers on one device, under ``nn.vmap`` over "model": each variable gets
    a leading tower axis, and the towers' collectives cross that axis."""
    stacked = nn.vmap(Tower, in_axes=None, out_axes=0, axis_name=MODEL_AXIS, axis_size=count,
                      variable_axes={c: 0 for c in TOWER_COLLECTIONS},
                      split_rngs={"params": True})
    return _marked(stacked, initializing)


def one_tower(initializing: bool) -> Any:
    """One Tower run as it is (no vmap of size 1, which costs copies), its variables kept
    with the leading tower axis of 1, so that every program's tree has the same form."""
    alone = nn.map_variables(Tower, TOWER_COLLECTIONS, trans_in_fn=_without_tower_axis,
                             trans_out_fn=_with_tower_axis, mutable=True)
    return _marked(alone, initializing)


def _without_tower_axis(variables: Any) -> Any:
    return jax.tree.map(lambda v: v[0], variables)


def _with_tower_axis(variables: Any) -> Any:
    return jax.tree.map(lambda v: v[None], variables)


class AlexNet(nn.Module):
    """AlexNet in one program: ``config.towers`` Towers and the output bias they share.

    Parameters: ``params['towers'][...]`` with a leading tower axis (marked
    ``TOWER_AXIS`` at init), and ``params['output_bias']``.  Dropout draws from the
    "dropout" rng; training needs one.  ``example_offset``: the global batch index of
    the first image (a data-parallel replica's, given by its layout).
    """

    config: ModelConfig
    layers: Layers = PLAIN
    batch_norm_axis: str | None = None  # BatchNorm statistics over this axis when training

    def hold_towers(self) -> nn.Module:
        """The module that computes this program's towers: all of them, side by side.
        (``layouts.py``'s layouts that put one tower on each device override it.)"""
        initializing = self.is_initializing()
        settings = dict(config=self.config, layers=self.layers,
                        batch_norm_axis=self.batch_norm_axis, name="towers")
        if self.config.towers == 1:
            return one_tower(initializing)(model_axis=None, **settings)
        return towers_side_by_side(self.config.towers, initializing)(**settings)

    def check_input(self, x: jax.Array) -> None:
        expected = tuple(self.config.input_shape)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"AlexNet expects images of shape (batch, {', '.join(map(str, expected))}) "
                f"(height, width, channels); got an array of shape {tuple(x.shape)}. "
                "Set config.model.input_shape to match the data, or resize the images.")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False,
                 example_offset: jax.Array | int = 0) -> jax.Array:
        self.check_input(x)
        dropout_key = self.make_rng("dropout") if train and self.config.dropout_rate > 0 else None
        logits = self.hold_towers()(x, train, dropout_key, example_offset)
        if logits.ndim == 3:  # side by side: every tower holds the same summed logits
            logits = logits[0]
        bias = self.param("output_bias", nn.initializers.zeros, (self.config.num_classes,))
        return logits + bias


def create_model(variant: str, layers: Layers = PLAIN, **knobs: Any) -> AlexNet:
    """AlexNet of ``variant`` with ``knobs`` (see ``model_config``), on one device."""
    return AlexNet(model_config(variant, **knobs), layers)
