"""Device layouts: where the towers and the data replicas live.  The model knows none of it.

* ``single``: one device; the towers side by side under ``nn.vmap`` (``networks.AlexNet``).
* ``model``: a (1, T) mesh ("data", "model"): tower t on device t, exchanging
  activations at conv3, fc6, fc7 and the output layer: the paper's two-GPU split.
* ``data_model``: an (R, T) mesh: R replicas of that T-device group, each on its slice
  of the global batch; gradients are averaged across replicas.
* ``data``: a 1-D ("data",) mesh: every device runs all towers (vmap) on its slice.
* ``auto``: ``data_model`` when the devices divide into tower groups, else ``data``.

Where towers live on devices, each device runs ``Tower`` alone on its slice of the
parameters (``TowerPerDevice``), its collectives crossing the mesh's "model" axis: the
same program that ``jax.pmap(..., axis_name="model")`` runs on the paper's two GPUs
(``tests/model/test_layouts.py`` checks it under a literal ``jax.pmap``).  The layouts use
``jax.shard_map`` rather than ``pmap``: data replicas of tower groups are one 2-D mesh
instead of nested pmaps (which this JAX rejects), and ``jax.grad`` of a shard_mapped
function is the gradient of the global computation, so the trainer's step is one
function for every layout (a pmapped loss, replicated over the towers, would be
differentiated once per tower and need rescaling).

Placement reads the marks the model sets where a tower axis is created (the logical
axis ``networks.TOWER_AXIS``): that axis is split over "model" where towers live on
devices, and every other axis, and every unmarked array, is replicated.  Parameters keep
the single-device tree in every layout, so checkpoints move freely between layouts.

Multi-host (``runtime/distributed.py`` starts ``jax.distributed``): every process builds
the same mesh over all processes' devices and feeds its own rows of each global batch
(``shard_batch``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax.model.layers import select
from alexnet_jax.model.networks import MODEL_AXIS, TOWER_AXIS, AlexNet, ModelConfig, one_tower
from alexnet_jax.runtime.errors import LayoutError

DATA_AXIS = "data"
LAYOUTS = ("single", "model", "data", "data_model", "auto")


def choose(parallelism: str, towers: int, num_devices: int) -> str:
    """The layout for ``parallelism`` on ``num_devices`` devices, or a clear error."""
    if parallelism not in LAYOUTS:
        raise LayoutError(f"parallelism={parallelism!r} is not one of: {', '.join(LAYOUTS)}.")
    if parallelism == "auto":
        if num_devices == 1:
            return "single"
        if towers > 1 and num_devices % towers == 0:
            return "model" if num_devices == towers else "data_model"
        return "data"
    if parallelism in ("model", "data_model"):
        if towers < 2:
            raise LayoutError(f"parallelism={parallelism} puts each tower on its own device, but "
                              f"this model has {towers} tower; use parallelism=data.")
        if num_devices % towers:
            raise LayoutError(f"parallelism={parallelism} needs a multiple of {towers} devices "
                              f"(one per tower); {num_devices} are available. Set num_devices.")
        if parallelism == "model" and num_devices != towers:
            raise LayoutError(f"parallelism=model uses exactly {towers} devices (one per tower); "
                              f"{num_devices} are available: use data_model to use them all, or "
                              f"set num_devices={towers}.")
    return parallelism


@dataclasses.dataclass(frozen=True)
class Plan:
    """A layout's shape before any device is touched: its kind, devices and data replicas
    (``plan``), and what the batch sizes must divide by."""

    kind: str
    devices: int
    replicas: int

    @property
    def towers_on_devices(self) -> bool:
        return self.kind in ("model", "data_model")

    def check_batch(self, batch_size: int, what: str = "batch_size", processes: int = 1) -> None:
        """A global batch splits evenly over the data replicas and over the processes."""
        for parts, over in ((self.replicas, f"data replicas of layout {self.kind}"),
                            (processes, "processes")):
            if batch_size % parts:
                raise LayoutError(f"{what}={batch_size} is not divisible by the {parts} {over}; "
                                  f"choose a multiple of {parts}.")


def plan(parallelism: str, towers: int, num_devices: int, processes: int = 1) -> Plan:
    """The layout for ``parallelism`` and a model of ``towers`` towers on ``num_devices``
    devices over ``processes`` processes (``create`` builds it), or a ``LayoutError``."""
    devices = 1 if parallelism == "single" else num_devices
    kind = choose(parallelism, towers, devices)
    if kind == "single" and processes > 1:
        raise LayoutError(f"parallelism={parallelism} trains on one device, but this run has "
                          f"{processes} processes: each would train a model of its own on its "
                          "share of the batch. Use parallelism=auto to train one model on "
                          "every process's devices.")
    replicas = 1 if kind == "single" else (devices // towers if kind in ("model", "data_model")
                                           else devices)
    if kind != "single" and replicas % processes:
        raise LayoutError(f"Layout {kind} has {replicas} data replica(s), which do not divide "
                          f"among the {processes} processes: each process feeds whole "
                          "replicas, so give every process the same number of them.")
    return Plan(kind, devices, replicas)


class TowerPerDevice(AlexNet):
    """AlexNet as one device of a layout with a tower per device: this device's Tower on
    its slice of the parameters, its collectives crossing the mesh's "model" axis."""

    def hold_towers(self) -> nn.Module:
        return one_tower(self.is_initializing())(
            config=self.config, layers=self.layers, model_axis=MODEL_AXIS,
            batch_norm_axis=self.batch_norm_axis, name="towers")


def initial_variables(config: ModelConfig, key: jax.Array) -> dict[str, Any]:
    """The network's variables at initialisation, computed on one device whatever the
    layout, so that every layout and every process starts from the very same values."""
    dummy = jnp.zeros((1, *config.input_shape), jnp.float32)
    variables = jax.jit(AlexNet(config).init)(key, dummy)
    return {k: nn.unbox(v) for k, v in variables.items() if k in ("params", "batch_stats")}


def marked_specs(config: ModelConfig, towers_on_devices: bool) -> dict[str, Any]:
    """PartitionSpecs of the network's variables: the marked tower axis on "model" where
    towers live on devices, everything else replicated."""
    dummy = jax.ShapeDtypeStruct((1, *config.input_shape), jnp.float32)
    boxed = jax.eval_shape(AlexNet(config).init, jax.random.key(0), dummy)
    rules = ((TOWER_AXIS, MODEL_AXIS if towers_on_devices else None),)
    logical = nn.get_partition_spec(boxed)
    return {k: nn.logical_to_mesh(logical.get(k, {}), rules) for k in ("params", "batch_stats")}


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the model is mapped onto devices; see the module docstring."""

    kind: str
    model: AlexNet  # the per-device program
    mesh: Mesh | None
    variable_specs: dict[str, Any]  # PartitionSpecs of params and batch_stats

    @property
    def data_size(self) -> int:
        return 1 if self.mesh is None else self.mesh.shape[DATA_AXIS]

    @property
    def model_size(self) -> int:
        return 1 if self.mesh is None else self.mesh.shape.get(MODEL_AXIS, 1)

    @property
    def num_devices(self) -> int:
        return self.data_size * self.model_size

    def describe(self, global_batch: int) -> str:
        if self.mesh is None:
            return f"layout single: 1 device ({jax.devices()[0].platform}), batch {global_batch}"
        return (f"layout {self.kind}: {self.data_size} data replica(s) x {self.model_size} "
                f"device(s) per replica over {jax.process_count()} process(es); per-device "
                f"batch {global_batch // self.data_size} of the global {global_batch}")

    def check_batch(self, batch_size: int, what: str = "batch_size") -> None:
        Plan(self.kind, self.num_devices, self.data_size).check_batch(batch_size, what)

    # --- placement -------------------------------------------------------------------

    def place(self, tree: Any, specs: Any) -> Any:
        """Puts a host (or single-device) pytree onto the layout's devices by ``specs``
        (a matching tree of PartitionSpecs), every process passing the same values."""
        if self.mesh is None:
            return tree

        def put(leaf, spec):
            sharding = NamedSharding(self.mesh, spec)
            host = np.asarray(jax.device_get(leaf))
            return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

        return jax.tree.map(put, tree, specs)

    def state_specs(self, state: Any, tx: Any) -> Any:
        """The PartitionSpecs of a training state (``train.TrainState``, or its shapes): the
        model's variables by their marks, the optimiser's (``tx``'s) copies of the
        parameters likewise, everything else replicated."""
        specs, replicated = self.variable_specs, P()
        opt_specs = optax.tree_map_params(
            tx, lambda _, spec: spec, state.opt_state, specs["params"],
            transform_non_params=lambda _: replicated, is_leaf=lambda x: isinstance(x, P))
        batch_stats = specs["batch_stats"] if state.batch_stats else {}
        ema = getattr(state, "ema", None)  # the weights' moving average, placed as they are
        return state.replace(step=replicated, params=specs["params"], opt_state=opt_specs,
                             rng=replicated, batch_stats=batch_stats,
                             **({} if ema is None else
                                {"ema": {"params": specs["params"], "batch_stats": batch_stats}}))

    def place_state(self, state: Any, tx: Any) -> Any:
        """Places a training state on the layout's devices by ``state_specs``."""
        return self.place(state, self.state_specs(state, tx))

    def shard_batch(self, batch: dict[str, np.ndarray]) -> Any:
        """This process's rows of a global batch -> global arrays split over "data"."""
        if self.mesh is None:
            return batch
        sharding = NamedSharding(self.mesh, P(DATA_AXIS))
        return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
                for k, v in batch.items()}

    # --- the mapped program ----------------------------------------------------------

    def apply(self, variables: Any, images: Any, train: bool = False, rngs: Any = None,
              mutable: Any = False) -> Any:
        """``model.apply`` with the same signature, run on the layout's devices."""
        if self.mesh is None:
            return self.model.apply(variables, images, train, rngs=rngs, mutable=mutable)
        rngs = rngs or {}
        variable_specs = {k: self.variable_specs[k] for k in variables}

        def local(variables, images, rngs):
            offset = jax.lax.axis_index(DATA_AXIS) * images.shape[0]
            out = self.model.apply(variables, images, train, offset, rngs=rngs, mutable=mutable)
            if not mutable:
                return out
            logits, updates = out
            # Equal on every replica when BatchNorm is synchronised; the replicas' mean if not.
            return logits, jax.lax.pmean(updates, DATA_AXIS)

        out_specs: Any = P(DATA_AXIS)
        if mutable:
            names = [mutable] if isinstance(mutable, str) else list(mutable)
            out_specs = (P(DATA_AXIS), {n: variable_specs[n] for n in names if n in variables})
        # Under `data` the towers' collectives run on vmap's "model" axis inside the mesh,
        # which JAX's varying-axes check rejects (an assertion in all_gather); the check is
        # off there only, and that layout's gradients are tested against one device.
        mapped = jax.shard_map(local, mesh=self.mesh, out_specs=out_specs,
                               in_specs=(variable_specs, P(DATA_AXIS), P()),
                               check_vma=self.model_size > 1)
        return mapped(variables, images, rngs)


def create(parallelism: str, config: ModelConfig, num_devices: int = 0,
           implementation: str = "auto", sync_batch_stats: bool = True,
           platform: str | None = None) -> Layout:
    """The layout for ``parallelism`` over the first ``num_devices`` devices (0: all), with
    the per-device program's layers chosen (``layers.select``) for ``platform``, the one
    the program will run on (default: JAX's default backend; a CPU host can build, and
    export, the program a GPU or a TPU runs)."""
    devices = jax.devices()
    if parallelism == "single":
        num_devices = 1
    if num_devices:
        if num_devices > len(devices):
            raise LayoutError(f"num_devices={num_devices}, but only {len(devices)} device(s) "
                              "are present.")
        devices = devices[:num_devices]
    shape = plan(parallelism, config.towers, len(devices), jax.process_count())
    kind, towers_on_devices = shape.kind, shape.towers_on_devices
    chosen = select(implementation, platform, grouped=config.towers > 1 and not towers_on_devices,
                    towers_on_devices=towers_on_devices)
    specs = marked_specs(config, towers_on_devices)
    if kind == "single":
        return Layout(kind, AlexNet(config, chosen), None, specs)
    batch_norm_axis = DATA_AXIS if sync_batch_stats else None
    grid = np.asarray(devices, dtype=object)
    if towers_on_devices:
        mesh = Mesh(grid.reshape(-1, config.towers), (DATA_AXIS, MODEL_AXIS))
        return Layout(kind, TowerPerDevice(config, chosen, batch_norm_axis), mesh, specs)
    return Layout(kind, AlexNet(config, chosen, batch_norm_axis), Mesh(grid, (DATA_AXIS,)), specs)
