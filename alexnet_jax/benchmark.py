"""The seed's timing protocol, and the full training step's throughput.

    python -m alexnet_jax.benchmark --variant seed --batch 32 --steps 100 [--dtype bfloat16]
        [--json FILE] [--compare [--torch-python PY]] [--layouts]

As in the seed: random N(0, 0.1) images kept on the device, 10 burn-in steps, then
mean +/- std seconds per batch for "Forward" (the softmax output) and for
"Forward-backward" (gradients of l2_loss(softmax output) with respect to every
parameter), plus the full training step (``train.train_step``: cross-entropy, the
paper's SGD update) in images/s.  The JSON has the keys that
../shared/reference/*_benchmark.py write.

``--input`` measures the paper's training input pipeline (decode, crop, flip, PCA
lighting, mean subtraction, batching) on JPEGs of ImageNet's typical 500x375 that it
writes to a temporary image folder, in images/s and per core, next to the images/s
the paper model's training step consumes on the same machine.

``--layouts`` times the training step under every device layout that fits the
devices present (see parallel.py), each relative to ``single``.  On CPU, start it
with XLA_FLAGS=--xla_force_host_platform_device_count=8 for 8 devices.

``--compare`` runs this benchmark and the references in ../shared/reference (the
seed's TensorFlow code, and its PyTorch twin where ``--torch-python`` can import
torch) one after another for ``--rounds`` rounds, each in its own process, and
prints every figure with the ratio project / peer; with torch, PyTorch's training step
too (``torch_train_step.py``: the reference's network, the paper's SGD).  Nothing on
the timing path imports TensorFlow.
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
from types import SimpleNamespace
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


def _synthetic_inputs(model: Any, batch: int) -> tuple[Any, Any, Any]:
    import jax
    import jax.numpy as jnp
    key_images, key_init, key_labels = jax.random.split(jax.random.PRNGKey(0), 3)
    images = 0.1 * jax.random.normal(key_images, (batch, *model.input_shape), jnp.float32)
    labels = jax.random.randint(key_labels, (batch,), 0, model.num_classes)
    return images, labels, jax.jit(model.init)(key_init, images[:1])


def time_train_step(model: Any, layout: Any, batch: int, steps: int, burn_in: int,
                    name: str = "Train step") -> dict[str, float]:
    """``train.jit_train_step`` (the trainer's own step) on synthetic data under ``layout``."""
    import jax

    from alexnet_jax import train
    from alexnet_jax.optim import optimizer_from_config

    images, labels, variables = _synthetic_inputs(model, batch)
    paper = SimpleNamespace(learning_rate=0.01, schedule="constant", momentum=0.9,
                            weight_decay=0.0005, decay_biases_and_norms=True)
    state = layout.place(train.TrainState.create(
        apply_fn=layout.apply, params=variables["params"],
        tx=optimizer_from_config(paper, variables["params"], 1, 1),
        batch_stats=variables.get("batch_stats", {}), rng=jax.random.PRNGKey(1)))
    data = layout.shard_batch({"image": jax.device_get(images), "label": jax.device_get(labels)})
    holder = {"state": state}

    def one_train_step():
        holder["state"], _ = train.jit_train_step(holder["state"], data)
        return holder["state"].params

    timing = time_run(one_train_step, name, steps, burn_in)
    return {**timing, "images_per_s": batch / timing["mean_s"]}


def run_layouts(variant: str, batch: int, steps: int, dtype: str = "float32",
                burn_in: int = 10) -> dict[str, Any]:
    """The training step under each layout that fits the devices, relative to single."""
    import jax

    from alexnet_jax import parallel
    from alexnet_jax.models import create_model

    model = create_model(variant, dtype=dtype)
    devices = jax.device_count()
    candidates = [("single", 1), ("model", model.towers), ("data_model", devices),
                  ("data", devices)]
    results: dict[str, Any] = {"variant": variant, "batch": batch, "devices": devices,
                               "device": jax.devices()[0].device_kind, "layouts": {}}
    for kind, count in candidates:
        try:
            layout = parallel.create(kind, model, count)
            layout.check_batch(batch)
        except parallel.LayoutError as error:
            print(f"{kind}: skipped ({error})")
            continue
        timing = time_train_step(model, layout, batch, steps, burn_in,
                                 f"Train step, {kind} on {layout.num_devices} device(s)")
        results["layouts"][kind] = {**timing, "devices": layout.num_devices}
    single = results["layouts"]["single"]["mean_s"]
    for kind, timing in results["layouts"].items():
        timing["relative_to_single"] = timing["mean_s"] / single
        print(f"{kind:>11} on {timing['devices']} device(s): {timing['mean_s']:.3f} s/step, "
              f"{timing['relative_to_single']:.2f}x single")
    return results


def run_benchmark(variant: str, batch: int, steps: int, dtype: str = "float32",
                  burn_in: int = 10, implementation: str = "auto") -> dict[str, Any]:
    import flax
    import jax
    import jax.numpy as jnp
    import optax

    from alexnet_jax import ops, parallel
    from alexnet_jax.models import create_model

    model = create_model(variant, dtype=dtype, implementation=implementation)
    images, _, variables = _synthetic_inputs(model, batch)
    params = variables["params"]

    def softmax_output(params, images):
        return jax.nn.softmax(model.apply({"params": params}, images))

    forward = ops.jit(softmax_output)
    forward_backward = ops.jit(lambda params, images: jax.grad(
        lambda p: 0.5 * jnp.sum(softmax_output(p, images) ** 2))(params))

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
    result["train_step"] = time_train_step(model, parallel.create("single", model), batch,
                                           steps, burn_in)
    print(f"Train step: {result['train_step']['images_per_s']:.1f} images/s", flush=True)
    return result


def write_jpegs(root: str, count: int, classes: int = 10, size: tuple[int, int] = (500, 375)
                ) -> None:
    """``count`` photo-like JPEGs (smooth colour fields plus noise, quality 90) in
    ``root/train/<class>/`` and a few in ``root/val/``."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    width, height = size
    for split, n in (("train", count), ("val", classes)):
        for i in range(n):
            folder = os.path.join(root, split, f"class{i % classes:02d}")
            os.makedirs(folder, exist_ok=True)
            coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), np.uint8)
            image = np.kron(coarse, np.ones((25, 25, 1), np.uint8))[:height, :width]
            image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(os.path.join(folder, f"{i}.jpg"), quality=90)


def run_input_benchmark(batch: int, steps: int, images: int = 512) -> dict[str, Any]:
    """Training batches/s of the paper's pipeline on generated JPEGs, per core."""
    from alexnet_jax import input_pipeline, parallel
    from alexnet_jax.config_base import base_config
    from alexnet_jax.models import create_model

    with tempfile.TemporaryDirectory() as root:
        write_jpegs(root, images)
        config = base_config()
        config.data.dataset, config.data.image_folder = "image_folder", root
        config.data.data_dir, config.data.mean_images = root, 256
        config.data.cache = False  # decode every epoch, as a real run does
        config.batch_size = batch
        pipeline = input_pipeline.create_pipeline(config)
        iterator = (b for epoch in range(10**6) for b in pipeline.train_batches(epoch))
        next(iterator)  # start-up: the mean image, tf.data's threads
        start = time.perf_counter()
        for _ in range(steps):
            next(iterator)
        seconds = time.perf_counter() - start
    cores = os.cpu_count() or 1
    rate = steps * batch / seconds
    print(f"Input pipeline (decode 500x375 JPEG, 256 centre, crop, flip, PCA lighting, mean): "
          f"{rate:.1f} images/s on {cores} cores, {rate / cores:.1f} per core", flush=True)
    model = create_model("paper")
    consumption = time_train_step(model, parallel.create("single", model), batch,
                                  steps=max(2, steps // 10), burn_in=1,
                                  name="Paper model train step")["images_per_s"]
    print(f"The paper model's train step consumes {consumption:.1f} images/s here: the input "
          f"pipeline supplies {rate / consumption:.1f}x that.", flush=True)
    return {"input_images_per_s": rate, "cores": cores, "input_images_per_s_per_core":
            rate / cores, "train_step_images_per_s": consumption, "batch": batch, "steps": steps}


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
        runners["pytorch_train_step"] = [
            args.torch_python, os.path.join(os.path.dirname(__file__), "torch_train_step.py"),
            "--reference", REFERENCE_DIR] + common
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
    peers = [p for p in ("tensorflow", "pytorch") if p in runners]
    print(f"\n{'seconds per batch':>18} {'project':>10} "
          + " ".join(f"{p:>12} {'ratio':>7}" for p in peers))
    for key in ("forward", "forward_backward"):
        ours = mean_of("project", key)
        row = f"{key:>18} {ours if ours is not None else float('nan'):>10.3f} "
        for peer in peers:
            theirs = mean_of(peer, key)
            ratio = ours / theirs if ours and theirs else None
            summary["ratios"][f"{key}/{peer}"] = ratio
            row += f"{theirs or float('nan'):>12.3f} {ratio or float('nan'):>7.2f} "
        print(row)
    if "pytorch_train_step" in runners:  # the TF seed code has no training step
        ours, theirs = mean_of("project", "train_step"), mean_of("pytorch_train_step", "train_step")
        if ours and theirs:
            summary["ratios"]["train_step_images_per_s/pytorch"] = theirs / ours
            print(f"{'train step img/s':>18} {args.batch / ours:>10.1f} {'':>20} "
                  f"{args.batch / theirs:>12.1f} {theirs / ours:>7.2f}")
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
    parser.add_argument("--input", action="store_true",
                        help="the paper's ImageNet input pipeline on generated JPEGs")
    parser.add_argument("--layouts", action="store_true",
                        help="time the training step under every layout that fits the devices")
    args = parser.parse_args(argv)
    if args.compare:
        result = compare(args)
    elif args.input:
        result = run_input_benchmark(args.batch, args.steps)
    elif args.layouts:
        result = run_layouts(args.variant, args.batch, args.steps, args.dtype, args.burn_in)
    else:
        result = run_benchmark(args.variant, args.batch, args.steps, args.dtype, args.burn_in,
                               args.implementation)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    if "--compare" not in sys.argv:  # --compare only starts processes (see host.py)
        from alexnet_jax import host
        host.restart_with_huge_pages()
    main()
