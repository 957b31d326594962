"""Ablation sweeps: many ordinary training runs, one results table.

    python -m alexnet_jax.sweep --sweep experiments/sweeps/lrn_vs_bn.py --workdir runs/lrn_vs_bn \\
        [--parallel K] [--quick]

A sweep file defines ``get_sweep()`` returning a dict:

* ``base``: the experiment file every run starts from (relative to the repository);
* ``variants``: a list of ``(name, {config key: value})``, or ``grid``: a dict
  ``{config key: [values]}`` expanded into every combination;
* ``seeds``: the seeds each variant runs with;
* ``baseline``: the variant the others are compared with (default: the first);
* ``overrides``: applied to every run (for example a shorter schedule);
* ``quick``: further overrides under ``--quick`` (smoke tests).

Each run is ``python -m alexnet_jax.main`` in ``DIR/<variant>-seed<k>/``: the one
trainer, in its own process.  A run whose ``summary.json`` exists is skipped; an
interrupted one resumes from its checkpoint when the sweep is started again.  Up to
K runs go at once.  At the end (and with ``--report``, without training) the sweep
writes ``DIR/results.csv``, ``DIR/results.md`` and PNG plots.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Sequence

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_ERROR_THRESHOLD = 0.25  # the paper's Figure 1: steps to reach 25% training error


@dataclasses.dataclass(frozen=True)
class Run:
    variant: str
    seed: int
    overrides: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        return f"{self.variant}-seed{self.seed}"


def load_sweep(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"Sweep file {path} does not exist; see experiments/sweeps/.")
    spec = importlib.util.spec_from_file_location("sweep_definition", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sweep = module.get_sweep()
    unknown = set(sweep) - {"base", "variants", "grid", "seeds", "baseline", "overrides", "quick"}
    if unknown:
        raise ValueError(f"Unknown sweep key(s) {sorted(unknown)} in {path}.")
    if ("variants" in sweep) == ("grid" in sweep):
        raise ValueError(f"{path}: give exactly one of 'variants' and 'grid'.")
    return sweep


def _value_name(value: Any) -> str:
    return str(value).replace(" ", "").replace("/", "_")


def expand(sweep: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(variant name, overrides) pairs, in order; grid names read ``key=value_key=value``."""
    if "variants" in sweep:
        variants = [(name, dict(overrides)) for name, overrides in sweep["variants"]]
    else:
        keys = list(sweep["grid"])
        variants = []
        for values in itertools.product(*(sweep["grid"][k] for k in keys)):
            name = "_".join(f"{k.split('.')[-1]}={_value_name(v)}" for k, v in zip(keys, values))
            variants.append((name, dict(zip(keys, values))))
    names = [name for name, _ in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"Variant names must be unique; got {names}.")
    return variants


def plan(sweep: dict[str, Any], quick: bool = False) -> list[Run]:
    """Every run of the sweep: variants x seeds, the shared and quick overrides applied."""
    shared = dict(sweep.get("overrides", {}))
    if quick:
        shared.update(sweep.get("quick", {}))
    runs = []
    for variant, overrides in expand(sweep):
        for seed in sweep.get("seeds", [0]):
            merged = {**shared, **overrides, "seed": seed}
            runs.append(Run(variant, seed, tuple(sorted(merged.items()))))
    return runs


def command(sweep: dict[str, Any], run: Run, workdir: str) -> list[str]:
    base = os.path.join(REPO, sweep["base"])
    flags = [f"--config.{key}={_flag_value(value)}" for key, value in run.overrides]
    return [sys.executable, "-m", "alexnet_jax.main", "--config", base,
            "--workdir", os.path.join(workdir, run.name), "--config.progress_bar=False", *flags]


def _flag_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def is_finished(workdir: str, run: Run) -> bool:
    return os.path.exists(os.path.join(workdir, run.name, "summary.json"))


def execute(sweep: dict[str, Any], runs: Sequence[Run], workdir: str, parallel: int = 1
            ) -> list[str]:
    """Runs what is not finished, up to ``parallel`` at once; returns the names that failed.

    Each run's console output goes to ``DIR/<run>/console.log``.
    """
    pending = [r for r in runs if not is_finished(workdir, r)]
    done = len(runs) - len(pending)
    print(f"Sweep: {len(runs)} runs, {done} already finished, {len(pending)} to run, "
          f"{parallel} at a time.", flush=True)
    active: dict[str, tuple[subprocess.Popen, float, Any]] = {}
    failed: list[str] = []
    start = time.time()
    try:
        while pending or active:
            while pending and len(active) < parallel:
                run = pending.pop(0)
                os.makedirs(os.path.join(workdir, run.name), exist_ok=True)
                log = open(os.path.join(workdir, run.name, "console.log"), "a")
                resumed = os.path.isdir(os.path.join(workdir, run.name, "checkpoints"))
                print(f"  start  {run.name}{' (resuming)' if resumed else ''}", flush=True)
                process = subprocess.Popen(command(sweep, run, workdir), cwd=REPO, stdout=log,
                                           stderr=subprocess.STDOUT)
                active[run.name] = (process, time.time(), log)
            time.sleep(0.5)
            for name, (process, started, log) in list(active.items()):
                if process.poll() is None:
                    continue
                log.close()
                del active[name]
                done += 1
                status = "done" if process.returncode == 0 else f"FAILED ({process.returncode})"
                if process.returncode != 0:
                    failed.append(name)
                elapsed = time.time() - start
                print(f"  {status:<6} {name} in {time.time() - started:.0f} s   "
                      f"[{done}/{len(runs)} runs, {elapsed / 60:.1f} min]", flush=True)
    except KeyboardInterrupt:
        for process, _, _ in active.values():
            process.terminate()  # each run checkpoints on SIGTERM and resumes next time
        for process, _, _ in active.values():
            process.wait()
        raise
    return failed


# --- aggregation ---------------------------------------------------------------------

def run_record(workdir: str, run: Run, baseline_params: dict[str, int]) -> dict[str, Any] | None:
    path = os.path.join(workdir, run.name)
    if not os.path.exists(os.path.join(path, "summary.json")):
        return None
    with open(os.path.join(path, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    curve, train_curve, threshold_step = [], [], None
    with open(os.path.join(path, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "test_top1_error" in record:
                curve.append((record["epoch"], record["test_top1_error"]))
            error = record.get("train_top1_error")
            if error is not None:
                train_curve.append((record["step"], error))
            if threshold_step is None and error is not None and error <= TRAIN_ERROR_THRESHOLD:
                threshold_step = record["step"]
    return {"run": run.name, "variant": run.variant, "seed": run.seed,
            "overrides": ";".join(f"{k}={v}" for k, v in run.overrides if k != "seed"),
            "test_top1_error": summary["test_top1_error"],
            "test_top5_error": summary["test_top5_error"],
            "best_test_top1_error": summary["best_test_top1_error"],
            "best_test_top5_error": summary["best_test_top5_error"],
            "steps_to_25pct_train_error": threshold_step,
            "wall_s": summary["wall_s"], "steps": summary["steps"],
            "params": baseline_params.get(run.variant) or _param_count(config),
            "curve": curve, "train_curve": train_curve}


def _param_count(config_json: dict[str, Any]) -> int:
    import ml_collections

    from alexnet_jax import summary
    return summary.summarize(ml_collections.ConfigDict(config_json))["params"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, std


def difference_interval(values: Sequence[float], baseline: Sequence[float]
                        ) -> tuple[float, float]:
    """Mean difference and the half-width of its 95% confidence interval (Student's t).

    ``values[i]`` and ``baseline[i]`` share seed i: the difference is paired, which
    removes what the seed does to both (data order, initialisation).
    """
    from scipy import stats
    differences = [v - b for v, b in zip(values, baseline)]
    mean, std = mean_std(differences)
    n = len(differences)
    if n < 2:
        return mean, float("nan")
    return mean, stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)


def aggregate(records: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """One row per variant: mean +/- std over seeds, and the paired difference to baseline."""
    by_variant: dict[str, dict[int, dict]] = {}
    for record in records:
        by_variant.setdefault(record["variant"], {})[record["seed"]] = record
    base = by_variant.get(baseline, {})
    rows = []
    for variant, seeds in by_variant.items():
        row: dict[str, Any] = {"variant": variant, "seeds": len(seeds),
                               "params": next(iter(seeds.values()))["params"]}
        for key in ("test_top1_error", "test_top5_error", "wall_s"):
            row[key] = mean_std([r[key] for r in seeds.values()])
        reached = [r["steps_to_25pct_train_error"] for r in seeds.values()]
        row["steps_to_25pct_train_error"] = (mean_std(reached) if None not in reached
                                             else None)
        paired = sorted(set(seeds) & set(base))
        if variant != baseline and paired:
            row["difference"] = difference_interval(
                [seeds[s]["test_top1_error"] for s in paired],
                [base[s]["test_top1_error"] for s in paired])
        rows.append(row)
    return rows


CSV_FIELDS = ("run", "variant", "seed", "overrides", "test_top1_error", "test_top5_error",
              "best_test_top1_error", "best_test_top5_error", "steps_to_25pct_train_error",
              "wall_s", "steps", "params")


def write_csv(path: str, records: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


def _percent(pair: tuple[float, float]) -> str:
    mean, std = pair
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if not math.isnan(std) else f"{100 * mean:.2f}"


def markdown_table(rows: list[dict[str, Any]], baseline: str, title: str) -> str:
    lines = [f"### {title}", "",
             f"Test error in % (mean ± std over seeds); difference to `{baseline}` in points of "
             "top-1 error, paired by seed, with its 95% confidence interval (Student's t).", "",
             "| variant | seeds | params | top-1 error | top-5 error | Δ top-1 vs baseline "
             "| steps to 25% train error | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "difference" in row:
            mean, half = row["difference"]
            diff = f"{100 * mean:+.2f} ± {100 * half:.2f}" if not math.isnan(half) else \
                f"{100 * mean:+.2f}"
        else:
            diff = "(baseline)" if row["variant"] == baseline else "n/a"
        steps = row["steps_to_25pct_train_error"]
        steps_text = f"{steps[0]:.0f}" if steps else "not reached"
        lines.append(f"| {row['variant']} | {row['seeds']} | {row['params']:,} | "
                     f"{_percent(row['test_top1_error'])} | {_percent(row['test_top5_error'])} | "
                     f"{diff} | {steps_text} | {row['wall_s'][0]:.0f} |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict[str, Any]], rows: list[dict[str, Any]], workdir: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    panels = (("train_curve", "step", "training top-1 error (%), logged windows"),
              ("curve", "epoch", "test top-1 error (%)"))
    for ax, (key, xlabel, ylabel) in zip(axes, panels):
        for row in rows:
            curves = [r[key] for r in records if r["variant"] == row["variant"] and r[key]]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            xs = [x for x, _ in curves[0][:length]]
            errors = 100 * np.array([[v for _, v in c[:length]] for c in curves])
            line, = ax.plot(xs, errors.mean(0), marker="o" if length < 20 else None,
                            label=row["variant"])
            ax.fill_between(xs, errors.min(0), errors.max(0), color=line.get_color(), alpha=0.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, min(100, ax.get_ylim()[1]))
        ax.legend()
    fig.suptitle("Per variant: mean over seeds, band = min to max")
    fig.tight_layout()
    paths.append(os.path.join(workdir, "curves.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = [row["variant"] for row in rows]
    means = [100 * row["test_top1_error"][0] for row in rows]
    stds = [100 * np.nan_to_num(row["test_top1_error"][1]) for row in rows]
    ax.bar(names, means, yerr=stds, capsize=6, color="tab:blue", alpha=0.8)
    ax.set_ylabel("test top-1 error (%)")
    ax.set_title("Final test error: mean ± std over seeds")
    ax.set_ylim(min(means) * 0.9, max(m + s for m, s in zip(means, stds)) * 1.05)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    paths.append(os.path.join(workdir, "bars.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def report(sweep: dict[str, Any], runs: Sequence[Run], workdir: str,
           title: str) -> list[dict[str, Any]]:
    """results.csv, results.md and the plots, from whatever runs have finished."""
    params: dict[str, int] = {}
    records = []
    for run in runs:
        record = run_record(workdir, run, params)
        if record:
            params[run.variant] = record["params"]
            records.append(record)
    if not records:
        raise RuntimeError(f"No finished runs under {workdir}: nothing to report.")
    write_csv(os.path.join(workdir, "results.csv"), records)
    baseline = sweep.get("baseline") or expand(sweep)[0][0]
    rows = aggregate(records, baseline)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(markdown_table(rows, baseline, title))
        finished = {r["run"] for r in records}
        unfinished = [r for r in runs if r.name not in finished]
        if unfinished:
            f.write(f"\n{len(unfinished)} of {len(runs)} runs did not finish:\n\n")
            f.writelines(f"- `{r.name}`: {why_unfinished(workdir, r)}\n" for r in unfinished)
    plot(records, rows, workdir)
    return rows


def why_unfinished(workdir: str, run: Run) -> str:
    """The run's own last word: its ``error:`` line (a NaN loss, say), or that it has not run."""
    path = os.path.join(workdir, run.name, "console.log")
    if not os.path.exists(path):
        return "not run yet"
    with open(path) as f:
        errors = [line.strip() for line in f if line.startswith("error:")]
    return errors[-1] if errors else "stopped before its summary (run the sweep again to resume)"


def run_sweep(sweep_file: str, workdir: str, parallel: int = 1, quick: bool = False,
              report_only: bool = False) -> int:
    """Runs what is unfinished of a sweep file's runs, then reports; 0 if all finished."""
    sweep = load_sweep(sweep_file)
    runs = plan(sweep, quick)
    os.makedirs(workdir, exist_ok=True)
    failed = [] if report_only else execute(sweep, runs, workdir, parallel)
    title = os.path.splitext(os.path.basename(sweep_file))[0] + (" (quick)" if quick else "")
    report(sweep, runs, workdir, title)
    print(f"Results: {workdir}/results.md, results.csv, curves.png, bars.png")
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; see their console.log. "
              "Run the sweep again to retry them.")
        return 1
    return 0


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    args = flags.FLAGS
    try:
        return run_sweep(args.sweep, args.workdir, args.parallel, args.quick, args.report)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    flags.DEFINE_string("sweep", None, "A sweep file, e.g. experiments/sweeps/lrn_vs_bn.py.")
    flags.DEFINE_string("workdir", None, "The sweep's directory: one folder per run, results.")
    flags.DEFINE_integer("parallel", 1, "Runs at once, each its own process sharing the cores.")
    flags.DEFINE_bool("quick", False, "Shrink every run (smoke test).")
    flags.DEFINE_bool("report", False, "Only aggregate the finished runs.")
    flags.mark_flags_as_required(["sweep", "workdir"])
    app.run(main)
