"""The seed's timing protocol, the training step's throughput, and peers side by side.

    python -m alexnet_jax.benchmark --variant tf_benchmark --batch 32 --steps 100 \\
        [--dtype bfloat16] [--json FILE]
    python -m alexnet_jax.benchmark --compare --reference-dir DIR [--torch-python PY] ...
    python -m alexnet_jax.benchmark --layouts ...   # every device layout that fits
    python -m alexnet_jax.benchmark --input ...     # the ImageNet input pipeline

As in the seed: random N(0, 0.1) images kept on the device, ``burn_in`` untimed steps,
then mean +/- std seconds per batch for "Forward" (the softmax output) and for
"Forward-backward" (gradients of l2_loss(softmax output) with respect to every
parameter), plus the full training step (``train.train_step``: cross-entropy, the
paper's SGD update) in images/s.  The JSON has the keys that the seed's reference
scripts write.  Nothing on the timing path imports TensorFlow.

``--compare`` runs this benchmark and the references in ``--reference-dir`` (the
seed's TensorFlow code, ``seed_tf_benchmark.py``, and its PyTorch twin,
``torch_seed_benchmark.py``, eager and ``--compile``d, where ``--torch-python`` imports
torch) one after another for ``--rounds`` rounds, each in its own process, and prints
every figure with the ratio project / peer; with torch, PyTorch's training step too
(``benchmarks/torch_train_step.py``).

Each figure comes with its GFLOP/s and their fraction of a float32 matrix product's rate
measured in the same process (the machine's own ceiling); ``--profile`` adds the
forward-backward's time per layer, forward and backward (``tools/profile.py``).

``--layouts`` times the training step under every device layout that fits the devices
present (``layouts.py``), relative to ``single``; on CPU, start it with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` for 8 devices.

``--input`` measures the ImageNet training input on the host (``input_pipeline``) on
JPEGs of ImageNet's typical 500x375 that it writes to a temporary folder: from the
full-size images and from the prepared 256x256 store (JPEG and raw), per core, and the
cores one H100 would need.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Any

if __name__ == "__main__" and "--compare" not in sys.argv:  # before JAX starts (--compare
    from alexnet_jax import prepare_process  # only starts processes
    prepare_process()

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flops_per_image(config: Any) -> dict[str, float]:
    """Floating-point operations (2 per multiply-add) of the convolutions and dense layers
    for one image: forward, and forward-backward (the weights' gradients of every layer,
    the inputs' of every layer but the first)."""
    from alexnet_jax.tools import layer_table
    macs = [row["macs"] for row in layer_table.layer_table(config) if row["macs"]]
    forward = 2.0 * sum(macs)
    return {"forward": forward, "forward_backward": forward + forward + 2.0 * sum(macs[1:])}


def matmul_ceiling(size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a float32 size x size matrix product on the default device, compiled as
    the steps are: this machine's own ceiling, measured in the same process."""
    import jax
    import jax.numpy as jnp

    from alexnet_jax.model.layers import compiler_options
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    product = jax.jit(lambda a, b: a @ b, compiler_options=compiler_options() or None)
    jax.block_until_ready(product(a, a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(product(a, a))
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best / 1e9


def with_rates(timing: dict[str, float], flops: float, ceiling: float) -> dict[str, float]:
    gflops = flops / timing["mean_s"] / 1e9
    return {**timing, "gflops_per_s": gflops, "fraction_of_matmul": gflops / ceiling}


def seed_protocol(variant: str, batch: int, dtype: str = "float32",
                  implementation: str = "auto",
                  xla_layers: tuple[str, ...] = ()) -> SimpleNamespace:
    """The seed's two timed functions on one device, jitted as the steps are: ``forward``
    (the softmax output) and ``forward_backward`` (the parameters' gradient of half its sum
    of squares), each called as ``f(params, images)``; with ``layout``, ``params`` and
    synthetic ``images``.  ``xla_layers``: fields of ``layers.Layers`` (``lrn``,
    ``max_pool``, ``dense``) taken from the ``xla`` implementation's whatever
    ``implementation`` chose, to time a handler against XLA's form in one process."""
    import jax
    import jax.numpy as jnp

    from alexnet_jax.model import layouts
    from alexnet_jax.model.layers import compiler_options, select
    from alexnet_jax.model.networks import model_config
    from alexnet_jax.tools.timing import synthetic_batch

    layout = layouts.create("single", model_config(variant, dtype=dtype),
                             implementation=implementation)
    if xla_layers:
        xla = select("xla")
        mixed = dataclasses.replace(layout.model.layers,
                                    **{field: getattr(xla, field) for field in xla_layers})
        layout = dataclasses.replace(layout, model=layout.model.clone(layers=mixed))
    model, config = layout.model, layout.model.config

    def softmax_output(params, images):
        return jax.nn.softmax(model.apply({"params": params}, images))

    options = compiler_options() or None
    return SimpleNamespace(
        layout=layout,
        params=layouts.initial_variables(config, jax.random.PRNGKey(1))["params"],
        images=jnp.asarray(
            synthetic_batch(config.input_shape, config.num_classes, batch)["image"]),
        forward=jax.jit(softmax_output, compiler_options=options),
        forward_backward=jax.jit(lambda params, images: jax.grad(
            lambda p: 0.5 * jnp.sum(softmax_output(p, images) ** 2))(params),
            compiler_options=options))


def run_benchmark(variant: str, batch: int, steps: int, dtype: str = "float32",
                  burn_in: int = 10, implementation: str = "auto",
                  profile_layers: bool = False) -> dict[str, Any]:
    """Forward, forward-backward (the seed's protocol) and the training step, one device,
    each with its GFLOP/s and their fraction of a matrix product's rate measured here;
    ``profile_layers``: the forward-backward's time per layer too."""
    import flax
    import jax
    import optax

    from alexnet_jax.tools.timing import time_run, time_train_step

    seed = seed_protocol(variant, batch, dtype, implementation)
    layout, params, images = seed.layout, seed.params, seed.images
    model, config = layout.model, layout.model.config
    forward, forward_backward = seed.forward, seed.forward_backward

    device = jax.devices()[0]
    result: dict[str, Any] = {
        "framework": f"jax-{jax.__version__}", "variant": variant, "batch": batch, "dtype": dtype,
        "implementation": implementation, "layers": model.layers.name,
        "device": device.device_kind, "platform": device.platform,
        "versions": {"jax": jax.__version__, "flax": flax.__version__,
                     "optax": optax.__version__, "python": platform.python_version()}}
    ceiling = matmul_ceiling()
    flops = {k: v * batch for k, v in flops_per_image(config).items()}
    result["matmul_gflops_per_s"], result["flops"] = ceiling, flops
    result["forward"] = with_rates(time_run(lambda: forward(params, images), "Forward", steps,
                                            burn_in), flops["forward"], ceiling)
    result["forward_backward"] = with_rates(
        time_run(lambda: forward_backward(params, images), "Forward-backward", steps, burn_in),
        flops["forward_backward"], ceiling)
    result["train_step"] = with_rates(time_train_step(layout, batch, steps, burn_in),
                                      flops["forward_backward"], ceiling)
    for key in ("forward", "forward_backward", "train_step"):
        print(f"{key}: {result[key]['gflops_per_s']:.0f} GFLOP/s, "
              f"{result[key]['fraction_of_matmul']:.2f} of the {ceiling:.0f} GFLOP/s of a "
              "float32 matrix product here", flush=True)
    print(f"Train step: {result['train_step']['images_per_s']:.1f} images/s", flush=True)
    if profile_layers:
        from alexnet_jax.tools import profile
        instructions = profile.instruction_profile(forward_backward, params, images)
        result["profile"] = profile.per_layer(instructions)
        result["profile_instructions"] = instructions
        print("Forward-backward per layer:\n" + profile.format_table(result["profile"]) +
              "\nIts costliest instructions:\n" + profile.format_instructions(instructions),
              flush=True)
    return result


def run_layouts(variant: str, batch: int, steps: int, dtype: str = "float32",
                burn_in: int = 10) -> dict[str, Any]:
    """The training step under each layout that fits the devices, relative to single."""
    import jax

    from alexnet_jax.model import layouts
    from alexnet_jax.model.networks import model_config
    from alexnet_jax.tools.timing import time_train_step

    config = model_config(variant, dtype=dtype)
    devices = jax.device_count()
    candidates = [("single", 1), ("model", config.towers), ("data_model", devices),
                  ("data", devices)]
    results: dict[str, Any] = {"variant": variant, "batch": batch, "devices": devices,
                               "device": jax.devices()[0].device_kind, "layouts": {}}
    for kind, count in candidates:
        try:
            layout = layouts.create(kind, config, count)
            layout.check_batch(batch)
        except layouts.LayoutError as error:
            print(f"{kind}: skipped ({error})")
            continue
        timing = time_train_step(layout, batch, steps, burn_in,
                                 f"Train step, {kind} on {layout.num_devices} device(s)")
        results["layouts"][kind] = {**timing, "devices": layout.num_devices}
    single = results["layouts"]["single"]["mean_s"]
    for kind, timing in results["layouts"].items():
        timing["relative_to_single"] = timing["mean_s"] / single
        print(f"{kind:>11} on {timing['devices']} device(s): {timing['mean_s']:.3f} s/step, "
              f"{timing['relative_to_single']:.2f}x single")
    return results


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


# Training steps measured on one H100 (docs/performance.md, float32 at batch 128 for the
# paper's network; bfloat16 at batch 256 for the one-tower benchmark network).
H100_TRAIN_IMAGES_PER_S = {"paper float32 b128": 13_424, "tf_benchmark bfloat16 b256": 32_279}


def _host_rate(config: Any, batch: int, steps: int) -> float:
    """Training batches of ``config``'s pipeline, images/s, after a first batch."""
    from alexnet_jax import input_pipeline
    pipeline = input_pipeline.create_pipeline(config)
    iterator = (b for epoch in range(10**6) for b in pipeline.train_batches(epoch))
    next(iterator)  # start-up: the mean image, tf.data's threads
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch / (time.perf_counter() - start)


def run_input_benchmark(batch: int, steps: int, images: int = 2048) -> dict[str, Any]:
    """The host's training input, images/s per core, from JPEGs of ImageNet's typical
    500x375: decoded whole every epoch (``data.store=source``: the paper's augmentation on
    the host), and from the prepared 256x256 store as JPEG and raw (decoding and the crop on
    the host; the rest runs on the accelerator); the store's preparation rate; and the
    cores one H100 would need at its measured training rates."""
    from alexnet_jax.input_pipeline import store
    from alexnet_jax.training.config_base import base_config

    cores = os.cpu_count() or 1
    if (steps + 1) * batch > images:
        raise ValueError(f"--input times {steps} batches of {batch} within one epoch of "
                         f"{images} images: lower --steps or --batch.")
    result: dict[str, Any] = {"cores": cores, "batch": batch, "steps": steps, "images": images,
                              "per_core": {}}
    with tempfile.TemporaryDirectory() as root:
        write_jpegs(root, images)
        for name, changes in (("source", {"store": "source"}),
                              ("store_jpeg", {"store": "prepared", "store_format": "jpeg"}),
                              ("store_raw", {"store": "prepared", "store_format": "raw"})):
            config = base_config()
            config.data.dataset, config.data.image_folder = "image_folder", root
            config.data.data_dir, config.data.mean_images = root, 256
            config.data.cache = False  # decode every epoch, as a real run does
            # Within one epoch of this small set, as most of a real epoch runs: a buffer
            # the size of ImageNet's default would refill from scratch at every epoch here.
            config.data.shuffle_buffer = 256
            config.data.update(changes)
            config.batch_size = batch
            if name != "source":
                preparation = store.prepare(config.data, progress=False)
                result[f"prepare_{name}_images_per_s"] = preparation["images_per_s"]
                print(f"Preparing the {name.split('_')[1]} store: "
                      f"{preparation['images_per_s']:.0f} images/s on {cores} cores", flush=True)
            rate = _host_rate(config, batch, steps)
            result["per_core"][name] = rate / cores
            print(f"Training input from {name}: {rate:.0f} images/s on {cores} cores, "
                  f"{rate / cores:.0f} per core", flush=True)
    result["cores_per_h100"] = {
        f"{name} for {setting}": images_per_s / per_core
        for name, per_core in result["per_core"].items()
        for setting, images_per_s in H100_TRAIN_IMAGES_PER_S.items()}
    for key, cores_needed in result["cores_per_h100"].items():
        print(f"  cores to feed one H100, {key}: {cores_needed:.1f}")
    return result


# --- side by side ------------------------------------------------------------------------

def _run_json(command: list[str]) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        completed = subprocess.run(command + ["--json", out], capture_output=True, text=True)
        if completed.returncode != 0 or not os.path.exists(out):
            print(f"  ({' '.join(command[1:3])} failed: {completed.stderr.strip()[-300:]})")
            return None
        with open(out) as f:
            return json.load(f)


def peer_commands(reference_dir: str, torch_python: str, variant: str, dtype: str, batch: int,
                  steps: int, burn_in: int = 10) -> dict[str, list[str]]:
    """The command of each runner of ``--compare``: the project, TensorFlow, and (where
    ``torch_python`` imports torch) PyTorch eager and compiled, and their training steps."""
    common = ["--batch", str(batch), "--steps", str(steps), "--burn_in", str(burn_in)]
    runners = {
        "project": [sys.executable, "-m", "alexnet_jax.benchmark", "--variant", variant,
                    "--dtype", dtype] + common,
        "tensorflow": [sys.executable, os.path.join(reference_dir, "seed_tf_benchmark.py")]
        + common,
    }
    if subprocess.run([torch_python, "-c", "import torch"], capture_output=True).returncode:
        print(f"PyTorch is not importable by {torch_python}: skipping it (pip install "
              "torch==2.13.0 in some environment and pass --torch-python).")
        return runners
    torch_benchmark = os.path.join(reference_dir, "torch_seed_benchmark.py")
    torch_step = [torch_python, os.path.join(REPO, "benchmarks", "torch_train_step.py"),
                  "--reference", reference_dir] + common
    runners.update({"pytorch": [torch_python, torch_benchmark] + common,
                    "torch_compile": [torch_python, torch_benchmark, "--compile"] + common,
                    "pytorch_train_step": torch_step,
                    "torch_compile_train_step": torch_step + ["--compile"]})
    return runners


def compare(reference_dir: str, torch_python: str, variant: str, dtype: str, batch: int,
            steps: int, rounds: int, burn_in: int = 10) -> dict[str, Any]:
    """Project and peers in alternation, each in a fresh process; ratios of the means."""
    for name in ("seed_tf_benchmark.py", "torch_seed_benchmark.py"):
        if not os.path.exists(os.path.join(reference_dir, name)):
            raise SystemExit(f"error: --reference-dir {reference_dir!r} has no {name}; give the "
                             "folder holding the seed's reference benchmarks.")
    runners = peer_commands(reference_dir, torch_python, variant, dtype, batch, steps, burn_in)
    results: dict[str, list[dict]] = {name: [] for name in runners}
    for round_index in range(rounds):
        for name, command in runners.items():
            print(f"round {round_index + 1}/{rounds}: {name}", flush=True)
            result = _run_json(command)
            if result:
                results[name].append(result)

    def mean_of(name: str, key: str) -> float | None:
        values = [r[key]["mean_s"] for r in results.get(name, []) if key in r]
        return sum(values) / len(values) if values else None

    summary: dict[str, Any] = {"variant": variant, "batch": batch, "rounds": rounds,
                               "runs": results, "ratios": {}, "rates": {}}
    project = results["project"][0] if results["project"] else {}
    ceiling = project.get("matmul_gflops_per_s")
    for name in runners:
        for key in ("forward", "forward_backward", "train_step"):
            seconds = mean_of(name, key)
            if seconds and ceiling:
                flops = project["flops"]["forward" if key == "forward" else "forward_backward"]
                summary["rates"][f"{name}/{key}"] = {
                    "gflops_per_s": flops / seconds / 1e9,
                    "fraction_of_matmul": flops / seconds / 1e9 / ceiling}
    if ceiling:
        summary["matmul_gflops_per_s"] = ceiling
        print(f"Fractions of the {ceiling:.0f} GFLOP/s of a float32 matrix product here: " +
              ", ".join(f"{k} {v['fraction_of_matmul']:.2f}" for k, v in summary["rates"].items()))
    peers = [p for p in ("tensorflow", "pytorch", "torch_compile") if p in runners]
    print(f"\n{'seconds per batch':>18} {'project':>10} "
          + " ".join(f"{p:>14} {'ratio':>6}" for p in peers))
    for key in ("forward", "forward_backward"):
        ours = mean_of("project", key)
        row = f"{key:>18} {ours if ours is not None else float('nan'):>10.3f} "
        for peer in peers:
            theirs = mean_of(peer, key)
            ratio = ours / theirs if ours and theirs else None
            summary["ratios"][f"{key}/{peer}"] = ratio
            row += f"{theirs or float('nan'):>14.3f} {ratio or float('nan'):>6.2f} "
        print(row)
    ours = mean_of("project", "train_step")
    for peer in ("pytorch_train_step", "torch_compile_train_step"):
        theirs = mean_of(peer, "train_step")
        if ours and theirs:  # images/s: the project's over the peer's
            summary["ratios"][f"train_step_images_per_s/{peer.removesuffix('_train_step')}"] = \
                theirs / ours
            print(f"{'train step img/s':>18} {batch / ours:>10.1f}  {peer:>24} "
                  f"{batch / theirs:>8.1f} {theirs / ours:>6.2f}")
    return summary


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    args = flags.FLAGS
    if args.compare:
        if not args["reference-dir"].value:
            raise app.UsageError("--compare needs --reference-dir (the folder holding "
                                 "seed_tf_benchmark.py and torch_seed_benchmark.py).")
        result = compare(args["reference-dir"].value, args["torch-python"].value, args.variant,
                         args.dtype, args.batch, args.steps, args.rounds, args.burn_in)
    elif args.input:
        result = run_input_benchmark(args.batch, args.steps)
    elif args.layouts:
        result = run_layouts(args.variant, args.batch, args.steps, args.dtype, args.burn_in)
    else:
        result = run_benchmark(args.variant, args.batch, args.steps, args.dtype, args.burn_in,
                               args.implementation, args.profile)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


def define_flags() -> None:
    from alexnet_jax.model import layers, networks
    flags.DEFINE_enum("variant", "tf_benchmark", list(networks.VARIANTS),
                      "The network (networks.VARIANTS).")
    flags.DEFINE_integer("batch", 32, "Images per batch.")
    flags.DEFINE_integer("steps", 100, "Timed steps.")
    flags.DEFINE_integer("burn_in", 10, "Untimed steps first.")
    flags.DEFINE_enum("dtype", "float32", list(networks.DTYPES), "Computation dtype.")
    flags.DEFINE_enum("implementation", "auto", list(layers.IMPLEMENTATIONS),
                      "The layers (layers.select).")
    flags.DEFINE_string("json", None, "Also write the result as JSON to this file.")
    flags.DEFINE_bool("compare", False, "The project and its peers side by side.")
    flags.DEFINE_integer("rounds", 2, "--compare: rounds of all runners, alternating.")
    flags.DEFINE_string("reference-dir", None, "--compare: the folder of seed_tf_benchmark.py "
                        "and torch_seed_benchmark.py (the seed's reference benchmarks).")
    flags.DEFINE_string("torch-python", sys.executable, "--compare: a Python that imports torch.")
    flags.DEFINE_bool("input", False, "The ImageNet input pipeline on generated JPEGs.")
    flags.DEFINE_bool("layouts", False, "The training step under every layout that fits.")
    flags.DEFINE_bool("profile", False, "Also the forward-backward's time per layer.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
