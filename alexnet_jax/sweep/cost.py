"""How long a sweep's runs will take, before they start.

From the runs already finished where there are any (each variant's mean machine time,
else the mean over every finished run in the directory): a run's ``wall_s`` and the
``start_s`` of its process before it began.  Otherwise from a probe of the first run's
config on this machine: a fresh process's imports, the input pipeline's start and first
batches, the steps' compilation, and the trainer's own step timed on synthetic data
(``tools.timing.time_train_step``) times the run's steps, plus its evaluations at a
third of a training step's cost per image.  The figures are machine time: what the runs
take one after another on this machine.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

from alexnet_jax.sweep.plan import REPO, Run, resolved_config

PROBE_STEPS = 5


def finished_wall_times(workdir: str, runs: Sequence[Run]) -> dict[str, list[float]]:
    """Variant -> the wall times of its runs with a summary ("*" -> every finished run in
    the directory, of this sweep or not)."""
    times: dict[str, list[float]] = {"*": []}
    names = {run.name: run.variant for run in runs}
    if not os.path.isdir(workdir):
        return times
    for name in sorted(os.listdir(workdir)):
        path = os.path.join(workdir, name, "summary.json")
        if os.path.exists(path):
            with open(path) as f:
                summary = json.load(f)
            wall = summary.get("wall_s")
            if wall:
                wall += summary.get("start_s", 0.0)
                times["*"].append(wall)
                if name in names:
                    times.setdefault(names[name], []).append(wall)
    return times


def start_up_seconds() -> float:
    """A trainer process's imports, timed in a fresh interpreter."""
    import subprocess
    import sys
    import time
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import alexnet_jax.main, tensorflow_datasets"],
                   cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def data_seconds(config: Any) -> float:
    """The input pipeline's start: reading (or preparing) the data, and the first training
    and evaluation batches."""
    import time

    from alexnet_jax import input_pipeline
    started = time.perf_counter()
    pipeline = input_pipeline.create_pipeline(config)
    next(iter(pipeline.train_batches(0)))
    next(iter(pipeline.eval_batches(config.eval_batch_size, "test")))
    return time.perf_counter() - started


def probe_seconds(config: Any) -> tuple[float, float]:
    """One run of ``config`` alone on this machine, estimated from its process's start-up,
    its data's, and a few timed training steps of its model (single device) on synthetic
    data: (seconds, of which the steps' compilation, the evaluation step's counted as the
    training step's).  Runs of one program after the first load the compiled steps from
    the persistent cache instead."""
    import time

    from alexnet_jax import input_pipeline
    from alexnet_jax.model import layouts, networks
    from alexnet_jax.tools.timing import time_train_step

    info = input_pipeline.info(config.data.dataset)
    model = networks.config_from(config.model, info.image_shape, info.num_classes or 1000)
    layout = layouts.create("single", model, implementation=config.model.implementation)
    fixed = start_up_seconds() + data_seconds(config)
    started = time.perf_counter()
    timing = time_train_step(layout, config.batch_size, PROBE_STEPS, burn_in=1,
                             name="probe: train step")
    compile_s = time.perf_counter() - started - PROBE_STEPS * timing["mean_s"]
    train, test = info.sizes
    if config.data.max_train_examples:
        train = min(train, config.data.max_train_examples)
    train -= config.data.validation_examples
    if config.data.max_test_examples:
        test = min(test, config.data.max_test_examples)
    steps = config.num_epochs * (train // config.batch_size)
    evaluated = (test + config.data.validation_examples) * math.ceil(
        config.num_epochs / config.eval_every_epochs)
    per_image = timing["mean_s"] / config.batch_size
    return fixed + 2 * compile_s + steps * timing["mean_s"] + evaluated * per_image / 3, \
        2 * compile_s


def estimate(sweep: dict[str, Any], runs: Sequence[Run], workdir: str
             ) -> tuple[dict[str, float], str]:
    """Variant -> estimated seconds of one of its runs, and where the figure comes from."""
    times = finished_wall_times(workdir, runs)
    variants = list(dict.fromkeys(run.variant for run in runs))
    if times["*"]:
        overall = sum(times["*"]) / len(times["*"])
        source = (f"the mean wall time of the {len(times['*'])} finished runs in {workdir}, "
                  "per variant where it has some, at the pace they ran")
        return {v: (sum(times[v]) / len(times[v]) if times.get(v) else overall)
                for v in variants}, source
    first = next(run for run in runs if run.variant == variants[0])
    seconds, compile_s = probe_seconds(resolved_config(sweep, first))
    # Runs of one variant and setting share their programs (the seed is an argument; a
    # tuned value such as the learning rate is a constant of them): the first compiles
    # them, the others load them from the persistent cache.
    per_variant = {}
    for variant in variants:
        mine = [run for run in runs if run.variant == variant]
        programs = len({run.setting for run in mine})
        per_variant[variant] = seconds - compile_s + compile_s * programs / len(mine)
    return per_variant, (
        f"a probe of {first.variant}'s run: a process's start-up, its data's, its steps' "
        f"compilation and {PROBE_STEPS} timed steps (no run has finished yet)")
