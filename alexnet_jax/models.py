"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) as pure Flax modules.

The network is written once, as one ``Tower``: the part of the model that lived
on one of the paper's two GPUs.  Towers exchange activations through collectives
on the named axis ``"model"`` at exactly the places the paper's Figure 2 shows:

* conv3 reads both towers' pooled conv2 maps  (``all_gather``),
* every hidden fc layer (fc6, fc7) reads both towers' previous layer (``all_gather``),
* the output layer reads both towers' fc7: each tower multiplies its own fc7 by
  its rows of the output matrix and the partial logits are summed (``psum``),
  which is the same product as gathering fc7 first, with a quarter of the traffic.

``AlexNet`` runs the towers on one device with ``flax.linen.vmap``; the parameter
tree gets a leading tower axis (kept, of size 1, when a lone tower runs unmapped).  Under a device mesh whose ``"model"`` axis holds
the towers (``parallel.py``), the very same module runs one tower per device, the
paper's two-GPU split, on each device's slice of that same tree.

Randomness does not depend on the layout: the dropout mask of example i in tower t
is drawn from ``fold_in(fold_in(key, t), i)`` with i the example's index in the
global batch, so one device, two towers on two devices and any number of data
replicas draw identical masks.

Variants differ only by the table ``VARIANTS``.  Local response normalisation never
crosses towers: on the paper's GPUs each one normalised its own maps.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from alexnet_jax.ops import Conv2D, dense_dot_general, max_pool, resolve_implementation

MODEL_AXIS = "model"

NORMS = ("lrn", "batchnorm", "none")
NORM_POSITIONS = ("after_relu", "before_relu")
POOLS = {"overlapping": (3, 2), "non_overlapping": (2, 2)}
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"relu": nn.relu, "tanh": jnp.tanh}
INITS = ("paper", "scaled")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# The layers the paper gives a bias of 1 ("to accelerate the early stages of
# learning by providing the ReLUs with positive inputs"); every other bias is 0.
PAPER_UNIT_BIAS_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")
# The layers whose output the paper normalises (LRN after the ReLU of conv1 and conv2).
NORMALISED_LAYERS = ("conv1", "conv2")
# The layers followed by max-pooling.
POOLED_LAYERS = ("conv1", "conv2", "conv5")


def _check_choice(kind: str, value: Any, valid: Sequence[Any]) -> None:
    if value not in valid:
        raise ValueError(f"Unknown {kind} {value!r}; valid {kind}s are: {', '.join(map(str, valid))}.")


class LocalResponseNorm(nn.Module):
    """Local response normalisation across channels, exactly as the paper writes it.

        b[c] = a[c] / (k + alpha * sum_{c' in window(c)} a[c']^2) ** beta

    The window holds ``n`` adjacent channels centred on c (for even n: n//2 before,
    (n-1)//2 after, as PyTorch does) and is clipped at the first and last channel.
    alpha is NOT divided by n.  Defaults are the paper's: k=2, n=5, alpha=1e-4, beta=0.75.

    The same operation in other libraries (they disagree on dividing alpha by n):

    * ``tf.nn.lrn(x, depth_radius=(n-1)//2, bias=k, alpha=alpha, beta=beta)`` (odd n);
      the paper's LRN is ``depth_radius=2, bias=2, alpha=1e-4, beta=0.75``.
    * ``torch.nn.LocalResponseNorm(size=n, alpha=alpha*n, beta=beta, k=k)``; the
      paper's is ``size=5, alpha=5e-4, beta=0.75, k=2``.
    * Caffe ``LRN`` (ACROSS_CHANNELS): ``local_size=n, alpha=alpha*n, beta=beta, k=k``;
      its default k=1 is not the paper's, so k must be set to 2.

    The sum of squares is accumulated in at least float32 whatever the input dtype.
    """

    k: float = 2.0
    n: int = 5
    alpha: float = 1e-4
    beta: float = 0.75

    @nn.compact
    def __call__(self, a: jax.Array) -> jax.Array:
        compute_dtype = jnp.promote_types(a.dtype, jnp.float32)
        b = local_response_norm(a.astype(compute_dtype), self.k, self.n, self.alpha, self.beta)
        return b.astype(a.dtype)


def _channel_window_sum(x: jax.Array, before: int, after: int) -> jax.Array:
    """sum_{c' = c - before}^{c + after} x[..., c'], clipped at the first and last channel.

    Shifted slices that XLA fuses into one loop: on CPU several times faster than
    reduce_window's gradient."""
    channels = x.shape[-1]
    padded = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(before, after)])
    return sum(padded[..., i:i + channels] for i in range(before + after + 1))


def _lrn_parts(a, k, n, alpha, beta):
    denominator = k + alpha * _channel_window_sum(a * a, n // 2, (n - 1) // 2)
    if beta == 0.75:  # the paper's beta: rsqrt is ~1.5x faster than pow on CPU
        inverse_sqrt = jax.lax.rsqrt(denominator)
        scale = inverse_sqrt * jnp.sqrt(inverse_sqrt)
    else:
        scale = denominator ** (-beta)
    return a * scale, (a, denominator, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def local_response_norm(a: jax.Array, k: float, n: int, alpha: float, beta: float) -> jax.Array:
    """``LocalResponseNorm``'s arithmetic, with a hand-written gradient:

        d b[c] / d a[j] = s[c] [c = j] - 2 alpha beta a[c] a[j] s[c] / d[c]   (j in window(c))

    with d = k + alpha sum a^2 and s = d^-beta; the second term sums over the channels
    c whose window holds j, the window mirrored (tested against finite differences)."""
    return _lrn_parts(a, k, n, alpha, beta)[0]


def _lrn_forward(a, k, n, alpha, beta):
    return _lrn_parts(a, k, n, alpha, beta)


def _lrn_backward(k, n, alpha, beta, residuals, g):
    a, denominator, scale = residuals
    spread = _channel_window_sum(g * a * scale / denominator, (n - 1) // 2, n // 2)
    return (g * scale - 2.0 * alpha * beta * a * spread,)


local_response_norm.defvjp(_lrn_forward, _lrn_backward)


def _kernel_init(init: str, scaled_gain: float) -> Callable:
    if init == "paper":
        return nn.initializers.normal(stddev=0.01)
    return nn.initializers.variance_scaling(scaled_gain, "fan_in", "truncated_normal")


def _bias_init(init: str, layer: str) -> Callable:
    if init == "paper" and layer in PAPER_UNIT_BIAS_LAYERS:
        return nn.initializers.ones
    return nn.initializers.zeros


class TowerSettings(nn.Module):
    """The settings of one tower; ``Tower`` computes with them, ``AlexNet`` passes them on."""

    conv_channels: Sequence[int]
    conv_kernels: Sequence[int]
    conv1_stride: int
    conv1_padding: Any
    hidden_units: Sequence[int]
    num_classes: int
    norm: str = "lrn"
    norm_position: str = "after_relu"
    lrn: Sequence[float] = (2.0, 5, 1e-4, 0.75)  # k, n, alpha, beta
    pool: str = "overlapping"
    activation: str = "relu"
    dropout_rate: float = 0.5
    init_scheme: str = "paper"
    dtype: Any = jnp.float32
    implementation: str = "auto"
    batch_norm_axis: str | None = None  # a data-parallel axis to average BatchNorm statistics over
    # Set by AlexNet.  grouped: do the convolutions batch several towers (ops.py)?
    # model_axis: the towers' named axis; None for a lone tower, which crosses nothing.
    grouped: bool = True
    model_axis: str | None = MODEL_AXIS


class Tower(TowerSettings):
    """One tower of AlexNet: everything one of the paper's GPUs computed.

    Widths are per tower.  Runs under the named axis ``model_axis`` (vmap over the
    towers, or a device mesh); the collectives on it are the towers' only contact.  A
    lone tower (``model_axis`` None) crosses nothing.  Returns the full logits (summed
    over towers), without the output bias.
    """


    def _record(self, stage: str, x: jax.Array) -> jax.Array:
        """Keeps each stage's output as intermediates[stage + "_out"] for summaries and figures."""
        self.sow("intermediates", f"{stage}_out", x)
        return x

    def _exchange(self, x: jax.Array) -> jax.Array:
        """Concatenates every tower's activations along channels: a tower crossing."""
        if self.model_axis is None:
            return x
        return jax.lax.all_gather(x, self.model_axis, axis=x.ndim - 1, tiled=True)

    def _normalise(self, x: jax.Array, layer: str, train: bool) -> jax.Array:
        if self.norm == "lrn":
            k, n, alpha, beta = self.lrn
            return LocalResponseNorm(k=k, n=int(n), alpha=alpha, beta=beta, name=f"lrn{layer[-1]}")(x)
        if self.norm == "batchnorm":
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                dtype=self.dtype, axis_name=self.batch_norm_axis if train else None,
                                use_fast_variance=False,
                                name=f"bn{layer[-1]}")(x)
        return x

    def _dropout(self, x: jax.Array, layer: int, key: jax.Array | None,
                 example_offset: jax.Array | int) -> jax.Array:
        """Dropout with a mask per (tower, layer, global example index): see the module doc."""
        if key is None or self.dropout_rate == 0.0:
            return x
        tower = 0 if self.model_axis is None else jax.lax.axis_index(self.model_axis)
        key = jax.random.fold_in(jax.random.fold_in(key, tower), layer)
        keep_rate = 1.0 - self.dropout_rate
        examples = example_offset + jnp.arange(x.shape[0])
        keep = jax.vmap(lambda i: jax.random.bernoulli(
            jax.random.fold_in(key, i), keep_rate, x.shape[1:]))(examples)
        return jnp.where(keep, x / keep_rate, 0.0).astype(x.dtype)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, dropout_key: jax.Array | None = None,
                 example_offset: jax.Array | int = 0) -> jax.Array:
        """``dropout_key``: None for no dropout; ``example_offset``: the global batch index of
        ``x``'s first row (non-zero on data-parallel replicas)."""
        act = ACTIVATIONS[self.activation]
        window, stride = POOLS[self.pool]
        gain = 2.0 if self.activation == "relu" else 1.0
        kernel_init = _kernel_init(self.init_scheme, gain)
        x = x.astype(self.dtype)
        for i, (channels, size) in enumerate(zip(self.conv_channels, self.conv_kernels), start=1):
            layer = f"conv{i}"
            if i == 3:
                x = self._exchange(x)
            first = i == 1
            x = Conv2D(channels, size, stride=self.conv1_stride if first else 1,
                       padding=self.conv1_padding if first else "SAME",
                       dtype=self.dtype, kernel_init=kernel_init,
                       bias_init=_bias_init(self.init_scheme, layer),
                       implementation=self.implementation, grouped=self.grouped,
                       name=layer)(x)
            normalised = layer in NORMALISED_LAYERS
            if normalised and self.norm_position == "before_relu":
                x = self._record(f"norm{i}", self._normalise(x, layer, train))
            x = self._record(layer, act(x))
            if normalised and self.norm_position == "after_relu":
                x = self._record(f"norm{i}", self._normalise(x, layer, train))
            if layer in POOLED_LAYERS:
                x = self._record(f"pool{i}", max_pool(x, window, stride, self.implementation))
        for i, units in enumerate(self.hidden_units, start=6):
            layer = f"fc{i}"
            # Gathering pool5's maps before flattening keeps fc6's rows in the (h, w, c)
            # order of a one-tower network, so the towers' weights concatenate into its.
            x = self._exchange(x)
            x = x.reshape(x.shape[0], -1)
            x = nn.Dense(units, dtype=self.dtype, kernel_init=kernel_init,
                         dot_general=dense_dot_general,
                         bias_init=_bias_init(self.init_scheme, layer), name=layer)(x)
            x = act(x)
            x = self._record(layer, self._dropout(x, i, dropout_key if train else None,
                                                  example_offset))
        partial_logits = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype,
                                  dot_general=dense_dot_general,
                                  kernel_init=kernel_init, name="output")(x)
        partial_logits = partial_logits.astype(jnp.float32)
        if self.model_axis is None:
            return partial_logits
        return jax.lax.psum(partial_logits, self.model_axis)


class AlexNet(TowerSettings):
    """AlexNet with ``towers`` towers (``flax.linen.vmap`` over "model").

    Fields are those of a row of ``VARIANTS`` plus the knobs; build one with
    ``create_model``.  Parameters: ``params['towers'][...]`` with a leading tower axis,
    and ``params['output_bias']`` shared by the towers' summed logits.  Dropout draws
    from the "dropout" rng; training needs one.

    The last three fields are set by ``parallel.py``, not by configs: under a device
    mesh with the towers on the "model" axis (``towers_on_devices``), each device holds
    a one-tower slice of the same parameter tree and the "model" collectives cross
    devices; ``data_axis`` names the mesh's data-parallel axis, if any.
    """

    input_shape: Sequence[int] = (224, 224, 3)
    towers: int = 2
    sync_batch_stats: bool = True  # BatchNorm over the global batch when data-parallel
    towers_on_devices: bool = False
    data_axis: str | None = None

    def check_input(self, x: jax.Array) -> None:
        expected = tuple(self.input_shape)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"AlexNet expects images of shape (batch, {', '.join(map(str, expected))}) "
                f"(height, width, channels); got an array of shape {tuple(x.shape)}. "
                "Set config.model.input_shape to match the data, or resize the images.")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_input(x)
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(TowerSettings)
                  if f.name not in ("parent", "name")}
        if self.data_axis is not None and self.sync_batch_stats:
            fields["batch_norm_axis"] = self.data_axis
        dropout_key = self.make_rng("dropout") if train and self.dropout_rate > 0 else None
        offset = 0 if self.data_axis is None else jax.lax.axis_index(self.data_axis) * x.shape[0]
        if self.towers_on_devices or self.towers == 1:
            # One tower here (with the towers on devices, "model" is the mesh's axis).
            # Not a vmap of size 1: XLA:CPU pays for that axis in copies (0.25 s of the
            # seed network's 1.15 s gradient went to transposing fc6's 9216x4096 matrix).
            tower = nn.map_variables(Tower, ("params", "batch_stats", "intermediates"),
                                     trans_in_fn=_without_tower_axis,
                                     trans_out_fn=_with_tower_axis, mutable=True)
            fields.update(grouped=False,
                          model_axis=MODEL_AXIS if self.towers_on_devices else None)
            logits = tower(**fields, name="towers")(x, train, dropout_key, offset)
        else:
            towers = nn.vmap(Tower, in_axes=None, out_axes=0, axis_name=MODEL_AXIS,
                             axis_size=self.towers,
                             variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
                             split_rngs={"params": True})
            logits = towers(**fields, name="towers")(x, train, dropout_key, offset)[0]
        bias = self.param("output_bias", nn.initializers.zeros, (self.num_classes,))
        return logits + bias


def _without_tower_axis(variables: Any) -> Any:
    return jax.tree_util.tree_map(lambda v: v[0], variables)


def _with_tower_axis(variables: Any) -> Any:
    return jax.tree_util.tree_map(lambda v: v[None], variables)


# Widths are per tower.  conv1_padding "cuda_convnet": cuda-convnet counts output
# positions with a ceiling, so the last 11x11 window hangs 3 px over the bottom and
# right edges of a 224 image and reads zeros: 224 -> 55, as in the paper's Figure 2.
CUDA_CONVNET_CONV1_PADDING = ((0, 3), (0, 3))

VARIANTS: dict[str, dict[str, Any]] = {
    # The paper's network: 2 x (48, 128, 192, 192, 128) conv maps, 2 x (2048, 2048) fc units.
    "paper": dict(input_shape=(224, 224, 3), conv_channels=(48, 128, 192, 192, 128),
                  conv_kernels=(11, 5, 3, 3, 3), conv1_stride=4,
                  conv1_padding=CUDA_CONVNET_CONV1_PADDING, hidden_units=(2048, 2048),
                  towers=2, num_classes=1000, lrn=(2.0, 5, 1e-4, 0.75), dropout_rate=0.5,
                  init_scheme="paper"),
    # One tower with the widths of torchvision / "One weird trick" (Krizhevsky 2014).
    "one_tower": dict(input_shape=(224, 224, 3), conv_channels=(64, 192, 384, 256, 256),
                      conv_kernels=(11, 5, 3, 3, 3), conv1_stride=4,
                      conv1_padding=CUDA_CONVNET_CONV1_PADDING, hidden_units=(4096, 4096),
                      towers=1, num_classes=1000, lrn=(2.0, 5, 1e-4, 0.75), dropout_rate=0.5,
                      init_scheme="paper"),
    # The seed's TensorFlow benchmark network, layer for layer: SAME padding (conv1
    # gives 56x56), tf.nn.lrn(depth_radius=4, bias=1, alpha=1e-3/9, beta=0.75), a ReLU
    # after its 1000-unit layer, then a 1000 -> 10 softmax layer; no dropout.
    "seed": dict(input_shape=(224, 224, 3), conv_channels=(64, 192, 384, 256, 256),
                 conv_kernels=(11, 5, 3, 3, 3), conv1_stride=4, conv1_padding="SAME",
                 hidden_units=(4096, 4096, 1000), towers=1, num_classes=10,
                 lrn=(1.0, 9, 1e-3 / 9, 0.75), dropout_rate=0.0, init_scheme="scaled"),
    # The paper's structure scaled for 28-32 px images and 10 classes (28 -> pools 13, 6, 2).
    "small": dict(input_shape=(28, 28, 1), conv_channels=(24, 48, 64, 64, 48),
                  conv_kernels=(5, 3, 3, 3, 3), conv1_stride=1, conv1_padding="SAME",
                  hidden_units=(256, 256), towers=2, num_classes=10,
                  lrn=(2.0, 5, 1e-4, 0.75), dropout_rate=0.5, init_scheme="scaled"),
}


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def create_model(variant: str, **knobs: Any) -> AlexNet:
    """See ``_create_model``; equal settings give the very same module object, so that
    jit-compiled steps holding ``model.apply`` are reused instead of compiled again."""
    return _create_model(variant, **{k: _frozen(v) for k, v in knobs.items()})


@functools.lru_cache(maxsize=64)
def _create_model(variant: str, **knobs: Any) -> AlexNet:
    """Builds AlexNet from a row of ``VARIANTS``, with knobs overriding the row.

    Knobs: norm, norm_position, pool, activation, towers, dropout_rate, num_classes,
    input_shape, init, dtype ("float32"/"bfloat16" or a jnp dtype); None keeps the
    variant's value.  Widths are per tower, so ``towers=1`` on "paper" is the paper's
    one-GPU ablation, a single tower of half the kernels.  Parameters are always
    float32; dtype is the computation's.
    """
    _check_choice("variant", variant, tuple(VARIANTS))
    fields = dict(VARIANTS[variant])
    if "init" in knobs:  # `init` reads best in configs, but Module.init is taken.
        knobs["init_scheme"] = knobs.pop("init")
    unknown = set(knobs) - {f.name for f in dataclasses.fields(AlexNet)}
    if unknown:
        raise ValueError(f"Unknown model setting(s) {sorted(unknown)}.")
    fields.update({k: v for k, v in knobs.items() if v is not None})
    if isinstance(fields.get("dtype"), str):
        _check_choice("dtype", fields["dtype"], tuple(DTYPES))
        fields["dtype"] = DTYPES[fields["dtype"]]
    _check_choice("norm", fields.get("norm", "lrn"), NORMS)
    _check_choice("norm_position", fields.get("norm_position", "after_relu"), NORM_POSITIONS)
    _check_choice("pool", fields.get("pool", "overlapping"), tuple(POOLS))
    _check_choice("activation", fields.get("activation", "relu"), tuple(ACTIVATIONS))
    _check_choice("init", fields["init_scheme"], INITS)
    resolve_implementation(fields.get("implementation", "auto"))
    if int(fields["towers"]) < 1:
        raise ValueError(f"towers must be at least 1; got {fields['towers']}.")
    fields["input_shape"] = tuple(fields["input_shape"])
    return AlexNet(**fields)


def model_from_config(model_config: Any, input_shape: Sequence[int] | None = None,
                      num_classes: int | None = None) -> AlexNet:
    """Builds the model that an experiment's ``config.model`` describes."""
    knobs = {k: v for k, v in model_config.items() if k != "variant"}
    if input_shape is not None and knobs.get("input_shape") is None:
        knobs["input_shape"] = tuple(input_shape)
    if num_classes is not None and knobs.get("num_classes") is None:
        knobs["num_classes"] = num_classes
    return create_model(model_config.variant, **knobs)
