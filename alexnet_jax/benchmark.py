"""The seed's timing protocol, and the full training step's throughput.

    python -m alexnet_jax.benchmark --variant seed --batch 32 --steps 100 [--dtype bfloat16]
        [--json FILE] [--compare [--torch-python PY]]

As in the seed: random N(0, 0.1) images kept on the device, 10 burn-in steps, then
mean +/- std seconds per batch for "Forward" (the softmax output) and for
"Forward-backward" (gradients of l2_loss(softmax output) with respect to every
parameter), plus the full training step (cross-entropy, the paper's SGD update)
in images/s.  The JSON has the keys that ../shared/reference/*_benchmark.py write.

``--compare`` runs this benchmark and the references in ../shared/reference (the
seed's TensorFlow code, and its PyTorch twin where ``--torch-python`` can import
torch) one after another for ``--rounds`` rounds, each in its own process, and
prints every figure with the ratio project / peer.  Nothing on the timing path
imports TensorFlow.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

REFERENCE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             os.pardir, "shared", "reference")


def time_run(fn: Callable[[], Any], name: str, steps: int, burn_in: int) -> dict[str, float]:
    """The seed's protocol: ``burn_in`` untimed calls, then mean and std over ``steps``."""
    import jax
    durations = []
    for i in range(steps + burn_in):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        if i >= burn_in:
            durations.append(time.perf_counter() - start)
    mean = sum(durations) / steps
    std = math.sqrt(max(sum(d * d for d in durations) / steps - mean * mean, 0.0))
    print(f"{name} across {steps} steps, {mean:.3f} +/- {std:.3f} sec / batch", flush=True)
    return {"mean_s": mean, "std_s": std, "steps": steps}


def run_benchmark(variant: str, batch: int, steps: int, dtype: str = "float32",
                  burn_in: int = 10, implementation: str = "auto") -> dict[str, Any]:
    import flax
    import jax
    import jax.numpy as jnp
    import optax

    from alexnet_jax.models import create_model
    from alexnet_jax.optim import paper_sgd

    model = create_model(variant, dtype=dtype, implementation=implementation)
    key_images, key_init, key_labels = jax.random.split(jax.random.PRNGKey(0), 3)
    images = 0.1 * jax.random.normal(key_images, (batch, *model.input_shape), jnp.float32)
    labels = jax.random.randint(key_labels, (batch,), 0, model.num_classes)
    variables = jax.jit(model.init)(key_init, images[:1])
    params = variables["params"]

    @jax.jit
    def forward(params, images):
        return jax.nn.softmax(model.apply({"params": params}, images))

    @jax.jit
    def forward_backward(params, images):
        return jax.grad(lambda p: 0.5 * jnp.sum(forward(p, images) ** 2))(params)

    tx = paper_sgd(0.01)

    @jax.jit
    def train_step(params, opt_state, images, labels, step):
        def loss_fn(p):
            logits = model.apply({"params": p}, images, train=True,
                                 rngs={"dropout": jax.random.fold_in(key_init, step)})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    device = jax.devices()[0]
    result: dict[str, Any] = {
        "framework": f"jax-{jax.__version__}", "variant": variant, "batch": batch, "dtype": dtype,
        "implementation": implementation, "device": device.device_kind,
        "platform": device.platform, "versions": {"jax": jax.__version__, "flax": flax.__version__,
                                                  "optax": optax.__version__,
                                                  "python": platform.python_version()}}
    result["forward"] = time_run(lambda: forward(params, images), "Forward", steps, burn_in)
    result["forward_backward"] = time_run(lambda: forward_backward(params, images),
                                          "Forward-backward", steps, burn_in)
    state = {"params": params, "opt_state": tx.init(params), "step": 0}

    def one_train_step():
        state["params"], state["opt_state"] = train_step(state["params"], state["opt_state"],
                                                         images, labels, state["step"])
        state["step"] += 1
        return state["params"]

    timing = time_run(one_train_step, "Train step", steps, burn_in)
    result["train_step"] = {**timing, "images_per_s": batch / timing["mean_s"]}
    print(f"Train step: {result['train_step']['images_per_s']:.1f} images/s", flush=True)
    return result


def _run_json(command: list[str]) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        completed = subprocess.run(command + ["--json", out], capture_output=True, text=True)
        if completed.returncode != 0 or not os.path.exists(out):
            print(f"  ({os.path.basename(command[1])} failed: {completed.stderr.strip()[-300:]})")
            return None
        with open(out) as f:
            return json.load(f)


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Project and peers in alternation, each in a fresh process; ratios of the means."""
    common = ["--batch", str(args.batch), "--steps", str(args.steps)]
    runners = {
        "project": [sys.executable, "-m", "alexnet_jax.benchmark", "--variant", args.variant,
                    "--dtype", args.dtype] + common,
        "tensorflow": [sys.executable, os.path.join(REFERENCE_DIR, "seed_tf_benchmark.py")] + common,
    }
    torch_check = subprocess.run([args.torch_python, "-c", "import torch"], capture_output=True)
    if torch_check.returncode == 0:
        runners["pytorch"] = [args.torch_python,
                              os.path.join(REFERENCE_DIR, "torch_seed_benchmark.py")] + common
    else:
        print(f"PyTorch is not importable by {args.torch_python}: skipping it "
              "(pip install torch==2.13.0 in some environment and pass --torch-python).")
    results: dict[str, list[dict]] = {name: [] for name in runners}
    for round_index in range(args.rounds):
        for name, command in runners.items():
            print(f"round {round_index + 1}/{args.rounds}: {name}", flush=True)
            result = _run_json(command)
            if result:
                results[name].append(result)

    def mean_of(name: str, key: str) -> float | None:
        values = [r[key]["mean_s"] for r in results[name] if key in r]
        return sum(values) / len(values) if values else None

    summary: dict[str, Any] = {"variant": args.variant, "batch": args.batch, "rounds": args.rounds,
                               "runs": results, "ratios": {}}
    print(f"\n{'':>18} {'project':>10} " + " ".join(f"{p:>12} {'ratio':>7}" for p in runners
                                                      if p != "project"))
    for key in ("forward", "forward_backward"):
        ours = mean_of("project", key)
        row = f"{key:>18} {ours if ours is not None else float('nan'):>10.3f} "
        for peer in runners:
            if peer == "project":
                continue
            theirs = mean_of(peer, key)
            ratio = ours / theirs if ours and theirs else None
            summary["ratios"][f"{key}/{peer}"] = ratio
            row += f"{theirs or float('nan'):>12.3f} {ratio or float('nan'):>7.2f} "
        print(row)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="seed", choices=("seed", "paper", "one_tower", "small"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--burn_in", type=int, default=10)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--implementation", default="auto", choices=("auto", "xla", "im2col"))
    parser.add_argument("--json", default=None)
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--torch-python", default=sys.executable)
    args = parser.parse_args(argv)
    if args.compare:
        result = compare(args)
    else:
        result = run_benchmark(args.variant, args.batch, args.steps, args.dtype, args.burn_in,
                               args.implementation)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
