"""The network's interchangeable parts: normalisations, activations and poolings.

Each kind is a ``Registry``: a name (the value of ``config.model.norm``, ``.activation`` or
``.pool``) mapped to an entry that holds what builds the part and every fact the rest of
the code reads about it.  ``networks.Tower`` builds its layers from the entries;
``config_base`` takes each normalisation's own config keys from them; ``layer_table``,
``profile`` and the TensorBoard hyperparameters find normalisation layers by the entry's
``layer`` name; the tests are parametrised over the registries.  A new normalisation is
one entry in ``NORMS`` (and its tests): nothing else names it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexnet_jax.model.layers.lrn import local_response_norm

Entry = TypeVar("Entry")


class Registry(Mapping[str, Entry], Generic[Entry]):
    """Name -> entry, in declaration order; an unknown name is an error listing the valid
    ones."""

    def __init__(self, kind: str, entries: dict[str, Entry]):
        self.kind = kind
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> Entry:
        self.check(name)
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, name: Any) -> None:
        if name not in self._entries:
            raise ValueError(f"{self.kind}={name!r} is not one of: {', '.join(self._entries)}.")


# --- normalisations ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NormSite:
    """Where a normalisation layer is built: one tower's maps after conv1 or conv2."""

    index: int  # 1 or 2: the conv layer whose maps it normalises
    channels: int  # the tower's maps at that layer
    train: bool
    dtype: Any  # the computation's dtype
    lrn: tuple[float, int, float, float]  # the variant's LRN constants (k, n, alpha, beta)
    lrn_op: Callable  # the backend's LRN arithmetic (``layers.Layers.lrn``)
    batch_norm_axis: str | None  # where batch statistics are reduced across devices
    options: Mapping[str, Any]  # the entry's own settings (``Norm.options``), resolved


@dataclasses.dataclass(frozen=True)
class Norm:
    """A normalisation of conv1's and conv2's maps: the paper's LRN, or what replaces it.

    ``build(site, name)`` returns the function applied to the maps, a Flax module created
    in the tower's scope under ``name`` (``f"{layer}{site.index}"``), or None for no
    layer.  ``collections`` are the variable collections its layers create.  ``options``
    are ``config.model`` keys of its own, with their defaults (``ModelConfig.norm_options``
    holds their values); ``check(options)`` raises ValueError for values that cannot
    work.  ``facts(site)`` says what a layer resolved from its options (recorded in
    ``tools/layer_table.py``'s table and in a run's ``summary.json``).
    """

    layer: str
    build: Callable[[NormSite, str], Callable[[jax.Array], jax.Array] | None]
    collections: tuple[str, ...] = ()
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    check: Callable[[Mapping[str, Any]], None] = lambda options: None
    facts: Callable[[NormSite], dict[str, Any]] = lambda site: {}
    doc: str = ""


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
    ``op`` is the arithmetic: a ``layers.Layers.lrn``, chosen for the backend.
    """

    k: float = 2.0
    n: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    op: Callable = local_response_norm

    @nn.compact
    def __call__(self, a: jax.Array) -> jax.Array:
        compute_dtype = jnp.promote_types(a.dtype, jnp.float32)
        b = self.op(a.astype(compute_dtype), self.k, self.n, self.alpha, self.beta)
        return b.astype(a.dtype)


def _lrn(site: NormSite, name: str) -> Callable:
    k, n, alpha, beta = site.lrn
    return LocalResponseNorm(k, int(n), alpha, beta, op=site.lrn_op, name=name)


def _batch_norm(site: NormSite, name: str) -> Callable:
    """Per-channel statistics over the batch (all replicas' batches where
    ``batch_norm_axis`` is set) while training, running averages at evaluation."""
    return nn.BatchNorm(use_running_average=not site.train, momentum=0.9, epsilon=1e-5,
                        dtype=site.dtype, axis_name=site.batch_norm_axis if site.train else None,
                        use_fast_variance=False, name=name)


def fitted_groups(site: NormSite) -> int:
    """GroupNorm's group count for one tower's maps: the largest divisor of its channels
    that is at most ``norm_groups`` (groups must be of equal size).  Wu & He (2018) use 32
    groups; a tower of 24 maps then gets 24 (one map a group), one of 48 gets 24 (two)."""
    limit = min(site.options["norm_groups"], site.channels)
    return max(g for g in range(1, limit + 1) if site.channels % g == 0)


def _group_norm(site: NormSite, name: str) -> Callable:
    """Per-example statistics over each group of maps and all positions: no batch
    statistics, so each example's output is independent of the rest of its batch."""
    return nn.GroupNorm(num_groups=fitted_groups(site), epsilon=1e-5, dtype=site.dtype,
                        use_fast_variance=False, name=name)


def _check_groups(options: Mapping[str, Any]) -> None:
    groups = options["norm_groups"]
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"norm_groups={groups!r} must be a whole number of at least 1.")


NORMS: Registry[Norm] = Registry("norm", {
    "lrn": Norm("lrn", _lrn, doc="the paper's local response normalisation (its constants "
                "are the variant's `lrn`)"),
    "batchnorm": Norm("bn", _batch_norm, ("params", "batch_stats"),
                      doc="BatchNorm (Ioffe & Szegedy 2015); statistics over the global batch "
                      "with `model.sync_batch_stats`"),
    "groupnorm": Norm("gn", _group_norm, ("params",), options={"norm_groups": 32},
                      check=_check_groups,
                      facts=lambda site: {"groups": fitted_groups(site), "channels": site.channels},
                      doc="GroupNorm (Wu & He 2018), `model.norm_groups` fitted to each "
                      "tower's maps"),
    "none": Norm("", lambda site, name: None, doc="no normalisation"),
})


def norm_options(norm: str, model: Any) -> tuple[tuple[str, Any], ...]:
    """The normalisation's own settings as ``config.model`` (any mapping) gives them,
    defaults filled in: the value of ``ModelConfig.norm_options``."""
    options = NORMS[norm].options
    return tuple((key, model.get(key, default) if model is not None else default)
                 for key, default in options.items())


def all_norm_options() -> dict[str, Any]:
    """Every normalisation's own ``config.model`` keys with their defaults."""
    return {key: default for entry in NORMS.values() for key, default in entry.options.items()}


def norm_layer_names() -> tuple[str, ...]:
    """The names normalisation layers go by in parameter trees and profiles."""
    return tuple(entry.layer for entry in NORMS.values() if entry.layer)


# --- activations and poolings --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Activation:
    fn: Callable[[jax.Array], jax.Array]
    gain: float  # the variance-scaling gain of the "scaled" init for layers it follows


ACTIVATIONS: Registry[Activation] = Registry("activation", {
    "relu": Activation(nn.relu, 2.0),
    "tanh": Activation(jnp.tanh, 1.0),
})


@dataclasses.dataclass(frozen=True)
class Pooling:
    """Max-pooling over window x window patches every ``stride`` pixels."""

    window: int
    stride: int


POOLS: Registry[Pooling] = Registry("pool", {
    "overlapping": Pooling(3, 2),  # the paper's (Section 3.4)
    "non_overlapping": Pooling(2, 2),
})
