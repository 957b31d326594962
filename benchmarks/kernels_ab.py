"""The training step with this checkout's XLA:CPU forms against another version of them.

    git show REV:alexnet_jax/model/cpu/xla_cpu.py > /tmp/xla_cpu_before.py
    python -m benchmarks.kernels_ab /tmp/xla_cpu_before.py [--variant small --batch 64]

These machines' speed drifts by 20% within minutes, more than most changes to one layer
save, so two benchmark runs minutes apart cannot tell such a change from the drift.  Here
both steps (``train.make_steps``, synthetic data, as ``alexnet_jax.benchmark`` times it)
are compiled in one process and timed in alternating rounds of 20 steps, the order flipped
every round, so that the drift hits both alike.  Prints each one's median ms per step and
the ratio other / this per round.  Both start from the same parameters: the largest
parameter difference after three steps says whether they compute the same thing.
"""
import argparse
import importlib.util
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.model import layouts
from alexnet_jax.model.cpu import chooser
from alexnet_jax.model.networks import model_config
from alexnet_jax.tools.timing import synthetic_training


def load_forms(path: str):
    """The module at ``path``, a version of ``alexnet_jax/model/cpu/xla_cpu.py``."""
    spec = importlib.util.spec_from_file_location("xla_cpu_other", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Flax's dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def compiled_step(variant: str, batch: int) -> list:
    """[step, state, batch] with ``chooser.xla_cpu`` as it is now, after three steps."""
    step, state, data = synthetic_training(layouts.create("single", model_config(variant)),
                                           batch)
    for _ in range(3):
        state, _ = step(state, data)
    return [step, jax.block_until_ready(state), data]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("other", help="another version of alexnet_jax/model/cpu/xla_cpu.py")
    parser.add_argument("--variant", default="small")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=16)
    args = parser.parse_args()

    runs = {"this": compiled_step(args.variant, args.batch)}
    chooser.xla_cpu = load_forms(args.other)  # what the CPU extra builds the layers from
    runs["other"] = compiled_step(args.variant, args.batch)
    difference = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(runs["this"][1].params), jax.tree.leaves(runs["other"][1].params)))
    print(f"largest parameter difference after 3 steps: {difference:.3g}")
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(args.rounds):
        for name in (("this", "other") if round_ % 2 == 0 else ("other", "this")):
            step, state, data = runs[name]
            start = time.perf_counter()
            for _ in range(20):
                state, _ = step(state, data)
            runs[name][1] = jax.block_until_ready(state)
            times[name].append((time.perf_counter() - start) / 20 * 1000)
    for name, values in times.items():
        print(f"{name}: median {np.median(values):.1f} ms per step "
              f"({', '.join(f'{v:.1f}' for v in values)})")
    ratios = [other / this for this, other in zip(times["this"], times["other"])]
    print(f"other / this per round: median {np.median(ratios):.3f}, this faster in "
          f"{sum(r > 1 for r in ratios)} of {len(ratios)} "
          f"({', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    from alexnet_jax import prepare_process  # as the trainer and the benchmark run
    prepare_process()
    main()
