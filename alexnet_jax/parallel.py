"""Device layouts: one device, the paper's two-GPU split, data replicas of it, multi-host.

The per-device program is ``AlexNet.apply``, written once.  A layout only changes
how it is mapped onto devices, with ``jax.shard_map`` over a device mesh:

* ``single``: one device; the towers run under ``flax.linen.vmap`` (no mesh).
* ``model``: a (1, T) mesh ("data", "model"): tower t on device t, exchanging
  activations at conv3, fc6, fc7 and the output layer, as in the paper's Figure 2.
* ``data_model``: an (R, T) mesh: R replicas of that T-device group, each on its
  slice of the global batch; gradients are averaged across replicas.
* ``data``: a 1-D ("data",) mesh: every device runs all towers (vmap) on its slice.
* ``auto``: ``data_model`` when the devices divide into tower groups, else ``data``.

Why ``shard_map`` and not ``pmap``: nested pmaps (data over model) fail on this
JAX (pmap is built on shard_map since 0.8), and ``jax.grad`` of a shard_mapped
function is the gradient of the global computation, so ``train.train_step`` stays
one function for every layout: the layout wraps ``apply_fn`` and nothing else.

Parameters keep the single-device tree in every layout (leading tower axis), so
checkpoints move freely between layouts; only their placement differs: the tower
axis is split over "model", everything else is replicated.

Multi-host: ``initialize_distributed`` starts ``jax.distributed``; every process
builds the same mesh over all processes' devices and feeds its own rows of each
global batch (``shard_batch``).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alexnet_jax.models import MODEL_AXIS, AlexNet

DATA_AXIS = "data"
LAYOUTS = ("single", "model", "data", "data_model", "auto")


class LayoutError(ValueError):
    """The layout asked for does not fit the model, the devices or the batch size."""


def choose(parallelism: str, towers: int, num_devices: int) -> str:
    """The layout for ``parallelism`` on ``num_devices`` devices, or a clear error."""
    if parallelism not in LAYOUTS:
        raise LayoutError(f"Unknown parallelism {parallelism!r}; valid layouts are: "
                          f"{', '.join(LAYOUTS)}.")
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
class Layout:
    """How the model is mapped onto devices; see the module docstring."""

    kind: str
    model: AlexNet  # the per-device program
    mesh: Mesh | None

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
        if batch_size % self.data_size:
            raise LayoutError(f"{what} {batch_size} is not divisible by the {self.data_size} data "
                              f"replicas of layout {self.kind}; choose a multiple of "
                              f"{self.data_size}.")

    # --- placement -------------------------------------------------------------------

    def spec(self, path: Any, leaf: Any) -> P:
        """Tower-stacked arrays are split over "model" when towers live on devices."""
        on_tower_axis = any(getattr(k, "key", None) == "towers" for k in path)
        if self.model_size > 1 and on_tower_axis and getattr(leaf, "ndim", 0) >= 1:
            return P(MODEL_AXIS)
        return P()

    def specs(self, tree: Any) -> Any:
        return jax.tree_util.tree_map_with_path(self.spec, tree)

    def place(self, tree: Any) -> Any:
        """Puts a host (or single-device) pytree onto the layout's devices, every process
        passing the same values."""
        if self.mesh is None:
            return tree

        def put(path, leaf):
            sharding = NamedSharding(self.mesh, self.spec(path, leaf))
            host = np.asarray(jax.device_get(leaf))
            return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

        return jax.tree_util.tree_map_with_path(put, tree)

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
            return self.model.apply(variables, images, train=train, rngs=rngs, mutable=mutable)
        rngs = rngs or {}
        variable_specs = self.specs(variables)

        def local(variables, images, rngs):
            out = self.model.apply(variables, images, train=train, rngs=rngs, mutable=mutable)
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


def create(parallelism: str, model: AlexNet, num_devices: int = 0) -> Layout:
    """The layout for ``parallelism`` over the first ``num_devices`` devices (0: all)."""
    devices = jax.devices()
    if parallelism == "single":
        num_devices = 1
    if num_devices:
        if num_devices > len(devices):
            raise LayoutError(f"num_devices={num_devices}, but only {len(devices)} device(s) "
                              "are present.")
        devices = devices[:num_devices]
    kind = choose(parallelism, model.towers, len(devices))
    replicas = len(devices) if kind == "data" else len(devices) // model.towers
    if kind != "single" and replicas % jax.process_count():
        raise LayoutError(f"Layout {kind} has {replicas} data replica(s), which do not divide "
                          f"among the {jax.process_count()} processes: each process feeds whole "
                          "replicas, so give every process the same number of them.")
    return _create(kind, model, tuple(devices))


@functools.lru_cache(maxsize=16)
def _create(kind: str, model: AlexNet, devices: Sequence[Any]) -> Layout:
    # Cached so that equal layouts are the same object: jitted steps key on apply_fn.
    if kind == "single":
        return Layout(kind, model, None)
    grid = np.asarray(devices, dtype=object)
    if kind == "data":
        mesh = Mesh(grid, (DATA_AXIS,))
        return Layout(kind, model.clone(data_axis=DATA_AXIS), mesh)
    mesh = Mesh(grid.reshape(-1, model.towers), (DATA_AXIS, MODEL_AXIS))
    return Layout(kind, model.clone(data_axis=DATA_AXIS, towers_on_devices=True), mesh)


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1) -> None:
    """Starts ``jax.distributed`` (one process per host) before any other JAX call.

    Arguments left unset are read from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``
    and ``JAX_PROCESS_ID``; where those are unset too, JAX detects the cluster itself
    (Cloud TPU, SLURM, Open MPI).  CPU processes exchange data through gloo.
    """
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    count = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", 0)) or None
    index = process_id if process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", -1))
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU backend only
    jax.distributed.initialize(coordinator_address=address, num_processes=count,
                               process_id=None if index < 0 else index)
