"""Seeds in one vmapped program against one process per seed, side by side.

    python -m benchmarks.seeds_vmapped --seeds 4 8 [--examples 5120] [--json FILE]

For each seed count S: the default Fashion-MNIST experiment, shortened to one epoch of
``--examples`` images, trained for S seeds (a) vmapped in one process
(``python -m alexnet_jax.main --seeds 0,...``) and (b) as S processes two at a time, as
``python -m alexnet_jax.sweep --parallel 2`` starts them; the wall time of each, start-up
and compilation included, and the training images per second of the whole.  The two
alternate over ``--rounds`` rounds, each in fresh workdirs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trainer(workdir: str, examples: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "alexnet_jax.main", "--config",
            os.path.join(REPO, "experiments", "fashion_mnist.py"), "--workdir", workdir,
            f"--config.data.max_train_examples={examples}", "--config.num_epochs=1",
            "--config.progress_bar=False", f"--config.data.data_dir={REPO}/data", *extra]


def vmapped(seeds: int, examples: int, root: str) -> float:
    started = time.perf_counter()
    subprocess.run(trainer(os.path.join(root, "v-seed{seed}"), examples,
                           f"--seeds={','.join(map(str, range(seeds)))}"),
                   check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - started


def separate(seeds: int, examples: int, root: str, parallel: int = 2) -> float:
    started, pending, active = time.perf_counter(), list(range(seeds)), []
    while pending or active:
        while pending and len(active) < parallel:
            seed = pending.pop(0)
            active.append(subprocess.Popen(
                trainer(os.path.join(root, f"p-seed{seed}"), examples, f"--config.seed={seed}"),
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.2)
        for process in [p for p in active if p.poll() is not None]:
            assert process.returncode == 0
            active.remove(process)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--examples", type=int, default=5120)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    results = []
    for seeds in args.seeds:
        times = {"vmapped": [], "separate": []}
        for round_ in range(args.rounds):
            order = ("vmapped", "separate") if round_ % 2 == 0 else ("separate", "vmapped")
            for name in order:
                with tempfile.TemporaryDirectory() as root:
                    run = vmapped if name == "vmapped" else separate
                    times[name].append(run(seeds, args.examples, root))
        images = seeds * (args.examples // 64) * 64
        row = {"seeds": seeds, "images": images,
               **{f"{k}_s": min(v) for k, v in times.items()},
               **{f"{k}_images_per_s": images / min(v) for k, v in times.items()}}
        row["vmapped_over_separate_time"] = row["vmapped_s"] / row["separate_s"]
        print(f"{seeds} seeds: vmapped {row['vmapped_s']:.0f} s ({row['vmapped_images_per_s']:.0f}"
              f" images/s), separate, two at a time, {row['separate_s']:.0f} s "
              f"({row['separate_images_per_s']:.0f} images/s): vmapped takes "
              f"{row['vmapped_over_separate_time']:.2f}x the time", flush=True)
        results.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
