"""Two ``model.implementation`` values side by side: forward and forward-backward, one process.

    python -m benchmarks.implementations_ab [--variant tf_benchmark --batch 32]
        [--implementations auto,xla] [--rounds 8]

The seed's protocol (softmax output; the gradient of half its sum of squares), as
``alexnet_jax.benchmark`` times it, for each implementation (``layers.select``: ``auto``
runs the handlers of ``onednn.py`` where they are built, ``xla`` XLA's own forms;
``+xla_lrn``, ``+xla_max_pool`` and ``+xla_dense`` after a name, e.g. ``auto+xla_lrn``,
keep that layer in XLA's form), compiled in one process and timed in alternating rounds
of 4 calls, the order flipped every round, so that this machine's drift hits both alike.
Prints each one's median seconds and the per-round ratio to the last one, and the largest
relative difference of their gradients.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.benchmark import seed_protocol

XLA_LAYERS = ("lrn", "max_pool", "dense")


def compiled(variant: str, batch: int, name: str):
    """``benchmark.seed_protocol`` for the implementation ``name``, both functions compiled."""
    implementation, *options = name.split("+")
    layers = tuple(option.removeprefix("xla_") for option in options)
    if unknown := [f"+{option}" for option, field in zip(options, layers)
                   if option == field or field not in XLA_LAYERS]:
        raise SystemExit(f"unknown option {', '.join(unknown)} in {name!r}: options are "
                         f"{', '.join('+xla_' + field for field in XLA_LAYERS)}")
    seed = seed_protocol(variant, batch, implementation=implementation, xla_layers=layers)
    jax.block_until_ready((seed.forward(seed.params, seed.images),
                           seed.forward_backward(seed.params, seed.images)))
    return seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="tf_benchmark")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--implementations", default="auto,xla")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    names = args.implementations.split(",")
    runs = {name: compiled(args.variant, args.batch, name) for name in names}
    gradients = [jax.tree.leaves(run.forward_backward(run.params, run.images))
                 for run in runs.values()]
    difference = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                     for a, b in zip(gradients[0], gradients[-1]))
    layers = ", ".join(f"{name}: {run.layout.model.layers.name}" for name, run in runs.items())
    print(f"layers: {layers}; largest gradient difference, relative to the leaf's largest "
          f"value: {difference:.2g}")
    parts = ("forward", "forward_backward")
    times = {(name, part): [] for name in names for part in parts}
    for round_ in range(args.rounds):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            run = runs[name]
            for part in parts:
                function = getattr(run, part)
                start = time.perf_counter()
                for _ in range(4):
                    jax.block_until_ready(function(run.params, run.images))
                times[(name, part)].append((time.perf_counter() - start) / 4)
    for part, label in zip(parts, ("forward", "forward-backward")):
        last = np.array(times[(names[-1], part)])
        for name in names:
            these = np.array(times[(name, part)])
            print(f"{label}: {name} median {np.median(these):.3f} s, per-round ratio to "
                  f"{names[-1]}: median {np.median(these / last):.3f} "
                  f"({', '.join(f'{r:.2f}' for r in these / last)})")


if __name__ == "__main__":
    from alexnet_jax import prepare_process  # as the trainer and the benchmark run
    prepare_process()
    main()
