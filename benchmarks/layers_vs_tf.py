"""The seed network's layers: the project's forms against TensorFlow's ops, layer by layer.

    python -m benchmarks.layers_vs_tf [--batch 32] [--rounds 2] [--alone]

``python -m alexnet_jax.benchmark --compare`` times the whole forward and forward-backward
pass against the seed's TensorFlow benchmark; where the project falls behind on a CPU,
this says in which layer.  The seed's network (conv1 11x11/4 to 64 maps, LRN with depth
radius 4, 3x3/2 max-pooling, ..., fc6-fc8; float32) on both sides:

* TensorFlow: the seed's ops (``tf.nn.conv2d`` + bias + ReLU, ``tf.nn.lrn``,
  ``tf.nn.max_pool``, ``tf.matmul`` + bias + ReLU) in a ``tf.function``, as TensorFlow
  runs them (oneDNN's kernels where TensorFlow was built with them);
* the project: the forms ``layers.select("auto")`` picks for a one-tower network (the CPU
  extra's oneDNN handlers where they are built), jitted with the project's compiler options.

By default it times the network cut after each layer, and what the layer adds (the
difference to the network cut before it), so that each layer keeps what the whole program
gives it (its input in the layout its neighbour left, fusions); ``--alone`` times each
layer by itself, from an input in the plain NHWC layout (a kernel against a kernel).
Forward, and forward-backward: the gradients of half the output's sum of squares (the
seed's loss) with respect to the weights (and, alone, the layer's input, except conv1's
image). Each side runs in a process of its own (the other's idle thread pools would share
the cores), in alternating rounds, the order flipped every round, so that the machine's
drift hits both alike; each time is the median of ``--calls`` calls, then of the rounds.
The ratio is project / TensorFlow (below 1: the project is faster). What a layer adds is a
difference of two medians, as noisy as the machine (a few ms here): read it for the large
layers, and the network up to each layer for the trend.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.input_pipeline.tf_runtime import tf as _tf
from alexnet_jax.model import layers, networks

# The seed's network, layer by layer: (name, kind, options, input shape without the batch).
SEED_LAYERS = (
    ("conv1", "conv", dict(features=64, kernel=11, stride=4), (224, 224, 3)),
    ("lrn1", "lrn", {}, (56, 56, 64)),
    ("pool1", "pool", {}, (56, 56, 64)),
    ("conv2", "conv", dict(features=192, kernel=5, stride=1), (27, 27, 64)),
    ("lrn2", "lrn", {}, (27, 27, 192)),
    ("pool2", "pool", {}, (27, 27, 192)),
    ("conv3", "conv", dict(features=384, kernel=3, stride=1), (13, 13, 192)),
    ("conv4", "conv", dict(features=256, kernel=3, stride=1), (13, 13, 384)),
    ("conv5", "conv", dict(features=256, kernel=3, stride=1), (13, 13, 256)),
    ("pool5", "pool", {}, (13, 13, 256)),
    ("fc6", "dense", dict(features=4096), (6 * 6 * 256,)),
    ("fc7", "dense", dict(features=4096), (4096,)),
    ("fc8", "dense", dict(features=1000), (4096,)),
)
POOL = (3, 2)  # window, stride


def seed_lrn() -> tuple[float, int, float, float]:
    """The seed's tf.nn.lrn(depth_radius=4, bias=1, alpha=1e-3/9, beta=0.75) as the
    project's (k, n, alpha, beta): the ``tf_benchmark`` variant's."""
    return networks.VARIANTS["tf_benchmark"]["lrn"]


class _Layers(nn.Module):
    """Layers ``start`` to ``end`` (exclusive) of the seed's network in the project's
    forms."""

    start: int
    end: int
    forms: layers.Layers

    @nn.compact
    def __call__(self, x):
        for name, kind, options, _ in SEED_LAYERS[self.start:self.end]:
            if kind == "conv":
                kernel, stride = options["kernel"], options["stride"]
                x = nn.relu(self.forms.conv(options["features"], (kernel, kernel),
                                            strides=(stride, stride), padding="SAME",
                                            name=name)(x))
            elif kind == "dense":
                x = nn.relu(self.forms.dense(options["features"], name=name)(
                    x.reshape(x.shape[0], -1)))
            elif kind == "lrn":
                x = self.forms.lrn(x, *seed_lrn())
            else:
                x = self.forms.max_pool(x, *POOL)
        return x


def project_functions(start: int, end: int, x: np.ndarray) -> tuple[Callable, Callable, tuple]:
    """(forward, forward-backward, their arguments): the project's layers start..end-1."""
    module = _Layers(start, end, layers.select("auto"))
    x = jnp.asarray(x)
    params = module.init(jax.random.key(0), x)
    options = layers.compiler_options() or None

    def loss(params, x):
        return 0.5 * jnp.sum(jnp.square(module.apply(params, x)))

    gradient = jax.grad(loss, argnums=(0, 1) if start > 0 else 0)  # not the image's
    return (jax.jit(module.apply, compiler_options=options),
            jax.jit(gradient, compiler_options=options), (params, x))


def tf_functions(start: int, end: int, x: np.ndarray) -> tuple[Callable, Callable, tuple]:
    """(forward, forward-backward, their arguments): the seed's ops of layers start..end-1."""
    tf = _tf()
    x = tf.constant(x)
    weights: dict[str, list] = {}
    channels = x.shape[-1]
    for name, kind, options, shape in SEED_LAYERS[start:end]:
        inputs = int(np.prod(shape)) if kind == "dense" else channels
        if kind == "conv":
            weights[name] = [tf.Variable(tf.random.truncated_normal(
                [options["kernel"]] * 2 + [inputs, options["features"]], stddev=0.1))]
        elif kind == "dense":
            weights[name] = [tf.Variable(tf.random.truncated_normal(
                [inputs, options["features"]], stddev=0.1))]
        if name in weights:
            weights[name].append(tf.Variable(tf.zeros([options["features"]])))
            channels = options["features"]

    def apply(x):
        for name, kind, options, _ in SEED_LAYERS[start:end]:
            if kind == "conv":
                stride = options["stride"]
                y = tf.nn.conv2d(x, weights[name][0], [1, stride, stride, 1], padding="SAME")
                x = tf.nn.relu(tf.nn.bias_add(y, weights[name][1]))
            elif kind == "dense":
                x = tf.nn.relu(tf.matmul(tf.reshape(x, [x.shape[0], -1]), weights[name][0])
                               + weights[name][1])
            elif kind == "lrn":
                x = tf.nn.lrn(x, 4, bias=1.0, alpha=1e-3 / 9, beta=0.75)
            else:
                x = tf.nn.max_pool(x, [1, POOL[0], POOL[0], 1], [1, POOL[1], POOL[1], 1],
                                   "VALID")
        return x

    variables = [w for pair in weights.values() for w in pair]

    @tf.function
    def forward_backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.nn.l2_loss(apply(x))
        return tape.gradient(loss, ([x] if start > 0 else []) + variables)

    return tf.function(apply), forward_backward, (x,)


def _median_ms(fn: Callable, args: tuple, calls: int, ready: Callable) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def _tf_ready(result):  # TensorFlow's CPU ops have finished when the call returns
    return result


def time_side(side: str, batch: int, calls: int, alone: bool) -> dict[str, list[float]]:
    """(forward, forward-backward) ms on one side, in this process, for each layer: alone,
    or the network cut after it."""
    rng = np.random.default_rng(0)
    functions = project_functions if side == "project" else tf_functions
    ready = jax.block_until_ready if side == "project" else _tf_ready
    result = {}
    for index, (name, *_) in enumerate(SEED_LAYERS):
        start = index if alone else 0
        x = rng.normal(size=(batch, *SEED_LAYERS[start][3])).astype(np.float32)
        *steps, fn_args = functions(start, index + 1, x)
        for fn in steps:  # compiled or traced, untimed
            ready(fn(*fn_args))
        result[name] = [_median_ms(fn, fn_args, calls, ready) for fn in steps]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--alone", action="store_true")
    parser.add_argument("--side", choices=("project", "tf"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # one round of one side, in a process of its own: printed as JSON
        print(json.dumps(time_side(args.side, args.batch, args.calls, args.alone)))
        return
    times: dict[str, list] = {"project": [], "tf": []}
    # Rounds after the first load the project's programs from a compilation cache.
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": os.environ.get(
        "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "layers_vs_tf"))}
    for round_ in range(args.rounds):
        for side in ("project", "tf") if round_ % 2 == 0 else ("tf", "project"):
            output = subprocess.run(
                [sys.executable, "-m", "benchmarks.layers_vs_tf", "--side", side,
                 f"--batch={args.batch}", f"--calls={args.calls}",
                 *(["--alone"] if args.alone else [])],
                check=True, capture_output=True, text=True, env=env).stdout
            times[side].append(json.loads(output.strip().splitlines()[-1]))
    names = [name for name, *_ in SEED_LAYERS]
    ms = {(side, part): np.array([np.median([one[name][part] for one in times[side]])
                                  for name in names])
          for side in times for part in (0, 1)}
    if args.alone:
        print(f"alone, batch {args.batch}, median of {args.rounds} rounds x {args.calls} calls")
    else:  # the network up to each layer, and what the layer adds to it
        print(f"within the network, batch {args.batch}, median of {args.rounds} rounds x "
              f"{args.calls} calls; the network up to the layer, then what the layer adds")
        ms.update({(side, part + 2): np.diff(ms[(side, part)], prepend=0.0)
                   for side in times for part in (0, 1)})
    parts = (0, 1) if args.alone else (0, 2, 1, 3)
    titles = {0: "forward ms", 1: "forward-backward ms", 2: "added ms", 3: "added ms"}
    print("each cell: project / TensorFlow (ratio)")
    print(f"{'layer':<7}" + "".join(f" | {titles[part]:<31}" for part in parts))
    for i, name in enumerate(names):
        print(f"{name:<7}" + "".join(
            f" | {ms[('project', part)][i]:8.2f} / {ms[('tf', part)][i]:8.2f} "
            f"({ms[('project', part)][i] / ms[('tf', part)][i]:5.2f})    " for part in parts))
    if args.alone:
        totals = [ms[(side, part)].sum() for part in (0, 1) for side in ("project", "tf")]
        print(f"{'sum':<7} | {totals[0]:8.2f} / {totals[1]:8.2f} ({totals[0] / totals[1]:5.2f})"
              f"     | {totals[2]:8.2f} / {totals[3]:8.2f} ({totals[2] / totals[3]:5.2f})")


if __name__ == "__main__":
    main()
