"""A sweep's results: per-run records, statistics over seeds, tables and plots.

``results.md`` holds the final table (test error mean ± std over seeds, the paired
difference to the baseline with its 95% interval and the verdict it supports
(``precision.py``), steps to 25% training error) and, for a tuned sweep, the tuning grid:
each variant's validation error per setting, the setting chosen, and the settings that
diverged.  ``results.csv`` has every run.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from alexnet_jax.sweep.plan import Run, SweepError, diverged, expand, setting_name, why_unfinished
from alexnet_jax.sweep.precision import Verdict, difference_interval, mean_std

TRAIN_ERROR_THRESHOLD = 0.25  # the paper's Figure 1: steps to reach 25% training error


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
            "setting": setting_name(run.setting),
            "overrides": ";".join(f"{k}={v}" for k, v in run.overrides if k != "seed"),
            "validation_top1_error": summary.get("validation_top1_error"),
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

    from alexnet_jax.tools import layer_table
    return layer_table.summarize(ml_collections.ConfigDict(config_json))["params"]


def aggregate(records: list[dict[str, Any]], baseline: str, precision: float | None = None
              ) -> list[dict[str, Any]]:
    """One row per variant: mean +/- std over seeds, and the paired difference to baseline
    with its verdict at ``precision`` (in error fractions; None: significance only)."""
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
            row["verdict"] = Verdict(len(paired), *row["difference"], precision)
        rows.append(row)
    return rows


CSV_FIELDS = ("run", "stage", "variant", "seed", "setting", "overrides", "validation_top1_error",
              "test_top1_error", "test_top5_error",
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
             "top-1 error, paired by seed, with its 95% confidence interval (Student's t), and "
             "the verdict it supports.", "",
             "| variant | seeds | params | top-1 error | top-5 error | Δ top-1 vs baseline "
             "| verdict | steps to 25% train error | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "difference" in row:
            mean, half = row["difference"]
            diff = f"{100 * mean:+.2f} ± {100 * half:.2f}" if not math.isnan(half) else \
                f"{100 * mean:+.2f}"
        else:
            diff = "(baseline)" if row["variant"] == baseline else "n/a"
        steps = row["steps_to_25pct_train_error"]
        steps_text = f"{steps[0]:.0f}" if steps else "not reached"
        verdict = row["verdict"].text() if "verdict" in row else ""
        lines.append(f"| {row['variant']} | {row['seeds']} | {row['params']:,} | "
                     f"{_percent(row['test_top1_error'])} | {_percent(row['test_top5_error'])} | "
                     f"{diff} | {verdict} | {steps_text} | {row['wall_s'][0]:.0f} |")
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
        if ax.get_legend_handles_labels()[0]:
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


def _in_order(settings: list[tuple]) -> list[tuple]:
    """Settings by their values where every value is a number (variants with grids of
    their own share the columns), else as they came."""
    values = [[value for _, value in setting] for setting in settings]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for row in values for v in row):
        return [setting for _, setting in sorted(zip(values, settings))]
    return settings


def tuning_table(sweep: dict[str, Any], choices: dict[str, tuple],
                 outcomes: list[dict[str, Any]], workdir: str) -> str:
    """Each variant's tuning runs (first seed): the error chosen on per setting, the
    choice in bold, a diverged setting as such."""
    key = sweep.get("select", "validation_top1_error")
    settings = [setting_name(setting) for setting in _in_order(
        list(dict.fromkeys(o["run"].setting for o in outcomes)))]
    lines = [f"### Tuning: {key.replace('_', ' ')} in % per setting (seed "
             f"{sweep.get('seeds', [0])[0]}); lowest chosen; test error not used", "",
             "| variant | " + " | ".join(settings) + " | chosen |",
             "|---|" + "---|" * (len(settings) + 1)]
    for variant, _ in expand(sweep):
        cells = []
        for name in settings:
            outcome = next((o for o in outcomes if o["run"].variant == variant
                            and setting_name(o["run"].setting) == name), None)
            if outcome is None:
                cells.append("")
            elif outcome["score"] is not None:
                text = f"{100 * outcome['score']:.2f}"
                chosen = variant in choices and setting_name(choices[variant]) == name
                cells.append(f"**{text}**" if chosen else text)
            elif diverged(workdir, outcome["run"]):
                cells.append("diverged")
            else:
                cells.append("unfinished")
        chosen = setting_name(choices[variant]) if variant in choices else "none finished"
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {chosen} |")
    return "\n".join(lines) + "\n"


def report(sweep: dict[str, Any], runs: Sequence[Run], workdir: str, title: str,
           tuning: tuple[dict[str, tuple], list[dict[str, Any]]] | None = None
           ) -> list[dict[str, Any]]:
    """results.csv, results.md and the plots, from whatever runs have finished; ``runs``
    are the final stage's, ``tuning`` the choices and outcomes of a tuned sweep's first."""
    params: dict[str, int] = {}
    records = []
    for run in runs:
        record = run_record(workdir, run, params)
        if record:
            params[run.variant] = record["params"]
            records.append({**record, "stage": "seeds" if tuning else "runs"})
    final_names = {r["run"] for r in records}
    tuning_records = []
    for outcome in (tuning[1] if tuning else []):
        record = run_record(workdir, outcome["run"], params)
        if record and record["run"] not in final_names:
            tuning_records.append({**record, "stage": "tuning"})
    if not records and not tuning_records:
        raise SweepError(f"No run under {workdir} has finished: nothing to report yet. Run "
                         "the sweep first (the same command without --report).")
    write_csv(os.path.join(workdir, "results.csv"), tuning_records + records)
    baseline = sweep.get("baseline") or expand(sweep)[0][0]
    precision = sweep.get("precision")
    rows = aggregate(records, baseline, precision / 100 if precision else None)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(markdown_table(rows, baseline, title) if rows else
                f"### {title}\n\nNo run of the final stage has finished yet.\n")
        finished = {r["run"] for r in records}
        unfinished = [r for r in runs if r.name not in finished]
        if unfinished:
            f.write(f"\n{len(unfinished)} of {len(runs)} runs did not finish:\n\n")
            f.writelines(f"- `{r.name}`: {why_unfinished(workdir, r)}\n" for r in unfinished)
        if tuning:
            f.write("\n" + tuning_table(sweep, *tuning, workdir))
    if rows:
        plot(records, rows, workdir)
    return rows
