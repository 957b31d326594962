"""Per-layer output shapes, parameters and multiply-adds of an experiment's model: the
table ``python -m alexnet_jax.summary`` prints.

The seed's ``print_tensor_info``, grown up.  Everything comes from
``jax.eval_shape``, so even the paper model is described without allocating it.

With ``--config.parallelism=model`` (or ``data_model``) it also lists what crosses
between the towers' devices per training step, the paper's design point: the towers
talk at only four places, and the bytes there are small next to the activations
each device keeps to itself.
"""
from __future__ import annotations

import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexnet_jax import input_pipeline
from alexnet_jax.model import components
from alexnet_jax.model.networks import DTYPES, AlexNet, ModelConfig, config_from, norm_facts

_STAGE = re.compile(r"(conv|norm|pool|fc)(\d+)_out")
_KIND_ORDER = {"conv": 0, "fc": 0, "norm": 1, "pool": 2}


def _size(tree: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _shapes(config: ModelConfig) -> tuple[Any, Any]:
    """The parameters' shapes and every recorded stage's output shape, for one image."""
    model = AlexNet(config)
    x = jax.ShapeDtypeStruct((1, *config.input_shape), jnp.float32)
    variables = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), x))
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, mutable=["intermediates"]), variables, x)
    return variables["params"], state


def layer_table(config: ModelConfig) -> list[dict[str, Any]]:
    """One row per stage: name, per-tower output shape, parameters, multiply-adds per image."""
    params, state = _shapes(config)
    stages = state["intermediates"]["towers"]
    tower_params = params["towers"]

    def order(name: str) -> tuple[int, int]:
        kind, index = _STAGE.fullmatch(name).groups()
        return int(index), _KIND_ORDER[kind]

    facts = norm_facts(config)
    rows = []
    for name in sorted(stages, key=order):
        kind, index = _STAGE.fullmatch(name).groups()
        shape = tuple(stages[name][0].shape[2:])  # drop the tower and batch axes
        layer = f"{kind}{index}"
        row_facts = {}
        if kind == "norm":
            own = f"{components.NORMS[config.norm].layer}{index}"
            layer_params = _size(tower_params.get(own, {}))
            macs = 0
            row_facts = facts.get(own, {})
        elif kind == "pool":
            layer_params, macs = 0, 0
        else:
            kernel = tower_params[layer]["kernel"]
            layer_params = _size(tower_params[layer])
            # kernel.size already sums the towers (leading tower axis).
            spatial = math.prod(shape[:-1]) if kind == "conv" else 1
            macs = spatial * math.prod(kernel.shape)
        rows.append(dict(name=layer, shape=shape, params=layer_params, macs=macs,
                         **({"facts": row_facts} if row_facts else {})))
    output_kernel = tower_params["output"]["kernel"]
    rows.append(dict(name="output", shape=(config.num_classes,),
                     params=math.prod(output_kernel.shape) + config.num_classes,
                     macs=math.prod(output_kernel.shape)))
    total = _size(params)
    if sum(r["params"] for r in rows) != total:
        raise AssertionError("summary rows do not account for every parameter")
    return rows


# Where the towers exchange activations (networks.Tower): the stage whose output crosses.
CROSSINGS = (("conv3", "pool2"), ("fc6", "pool5"), ("fc7", "fc6"))


def crossing_table(config: ModelConfig, replica_batch: int, replicas: int = 1
                   ) -> list[dict[str, Any]]:
    """Bytes each device receives per training step at each tower crossing.

    all_gather (conv3, fc6, fc7): a device receives the other towers' activations going
    forward, and going backward receives its share of their gradients (reduce-scatter):
    the same volume.  The output layer sums partial logits (all-reduce) going forward;
    its backward needs no exchange, every device holding the same logits' gradient.
    With data replicas, each device also all-reduces its parameters' gradients.
    """
    towers = config.towers
    params, state = _shapes(config)
    stages = state["intermediates"]["towers"]
    itemsize = jnp.dtype(DTYPES[config.dtype]).itemsize
    rows = []
    for layer, source in CROSSINGS:
        if f"{source}_out" not in stages:
            continue
        per_tower = math.prod(stages[f"{source}_out"][0].shape[2:])
        volume = (towers - 1) * per_tower * itemsize * replica_batch
        rows.append(dict(crossing=layer, exchanged=f"{source} (all_gather)",
                         forward_bytes=volume, backward_bytes=volume))
    # A ring all-reduce of n values moves 2 (k - 1) / k x n per device.
    logits = 2 * (towers - 1) / towers * config.num_classes * 4 * replica_batch
    rows.append(dict(crossing="output", exchanged="partial logits (psum)",
                     forward_bytes=int(logits), backward_bytes=0))
    if replicas > 1:
        device_params = _size(params) / towers * 4
        rows.append(dict(crossing="gradients", exchanged="across data replicas (pmean)",
                         forward_bytes=0,
                         backward_bytes=int(2 * (replicas - 1) / replicas * device_params)))
    return rows


def format_crossings(rows: list[dict[str, Any]], replica_batch: int) -> str:
    lines = [f"Tower crossings per step, per device (batch {replica_batch} per replica):",
             f"{'crossing':<10} {'what':<30} {'forward':>12} {'backward':>12}"]
    for r in rows:
        lines.append(f"{r['crossing']:<10} {r['exchanged']:<30} "
                     f"{_megabytes(r['forward_bytes']):>12} {_megabytes(r['backward_bytes']):>12}")
    return "\n".join(lines)


def _megabytes(count: int) -> str:
    return f"{count / 2**20:,.2f} MiB"


def format_table(rows: list[dict[str, Any]], towers: int) -> str:
    lines = [f"{'layer':<8} {'output (per tower)':>22} {'params':>13} {'multiply-adds':>15}"]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        if r["name"] != "output" and towers > 1:
            shape = f"{towers} x {shape}"
        facts = ", ".join(f"{k} {v}" for k, v in r.get("facts", {}).items())
        lines.append(f"{r['name']:<8} {shape:>22} {r['params']:>13,} {r['macs']:>15,}"
                     + (f"  ({facts})" if facts else ""))
    lines.append(f"{'total':<8} {'':>22} {sum(r['params'] for r in rows):>13,} "
                 f"{sum(r['macs'] for r in rows):>15,}")
    return "\n".join(lines)


def summarize(config: Any) -> dict[str, Any]:
    info = input_pipeline.info(config.data.dataset)
    model = config_from(config.model, info.image_shape, info.num_classes)
    rows = layer_table(model)
    summary = {"params": sum(r["params"] for r in rows), "macs": sum(r["macs"] for r in rows),
               "towers": model.towers, "input_shape": list(model.input_shape),
               "layers": [dict(r, shape=list(r["shape"])) for r in rows]}
    if config.parallelism in ("model", "data_model") and model.towers > 1:
        devices = config.num_devices or jax.device_count()
        replicas = max(devices // model.towers, 1) if config.parallelism == "data_model" else 1
        summary["replica_batch"] = config.batch_size // replicas
        summary["crossings"] = crossing_table(model, summary["replica_batch"], replicas)
    return summary
