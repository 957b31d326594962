"""What a sweep runs: its file, its runs stage by stage, each run's command, the choice.

A sweep file defines ``get_sweep()`` returning a dict:

* ``base``: the experiment file every run starts from (relative to the repository);
* ``variants``: a list of ``(name, {config key: value})``, or ``grid``: a dict
  ``{config key: [values]}`` expanded into every combination;
* ``seeds``: the seeds each variant runs with;
* ``baseline``: the variant the others are compared with (default: the first);
* ``overrides``: applied to every run (for example a validation split);
* ``tune``: optional, ``{config key: [values]}``: each variant's small grid, run with the
  first seed; each variant's setting is chosen on ``select`` (a key of the runs'
  ``summary.json``, lowest wins; default ``validation_top1_error``: the validation
  split's error at the end, never test), then the other seeds run at that setting; or
  ``{variant: {config key: [values]}}``, a grid per variant, every variant named (where
  the variants' best settings lie on different scales: SGD's and LARS's learning rates);
* ``quick``: further overrides under ``--quick`` (smoke tests);
* ``precision``: optional, in points of top-1 error: the half-width of the paired 95%
  interval against the baseline that settles a variant; seeds are then added in rounds
  (``precision.py``), up to ``max_seeds`` (default 10) per variant, ``seeds`` being the
  first round.

A run is identified by its resolved config (``config_base.config_hash``), not by its
name: ``resolved_config`` builds it as the trainer will.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import itertools
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEYS = {"base", "variants", "grid", "seeds", "baseline", "overrides", "tune", "select", "quick",
        "precision", "max_seeds"}
DEFAULT_SELECT = "validation_top1_error"
DEFAULT_MAX_SEEDS = 10
# What main's --workdir holds where several --seeds train together (training/seeds.py's
# SEED, which tests/sweep/test_sweep.py holds this to): written here, so that planning a
# sweep imports no training code.
SEED = "{seed}"


class SweepError(ValueError):
    """A sweep that cannot run as written; the message names the run or key and the fix."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: a variant, with a setting of the tuned keys, and a seed."""

    variant: str
    seed: int
    overrides: tuple[tuple[str, Any], ...]  # every config change, the seed's too
    setting: tuple[tuple[str, Any], ...] = ()  # the tuned keys' values

    @property
    def name(self) -> str:
        return "-".join([self.variant, *([setting_name(self.setting)] if self.setting else []),
                         f"seed{self.seed}"])


def setting_name(setting: Sequence[tuple[str, Any]]) -> str:
    """``lr=0.03`` style: each key's last part and its value."""
    short = {"learning_rate": "lr"}
    return "_".join(f"{short.get(k.split('.')[-1], k.split('.')[-1])}={_value_name(v)}"
                    for k, v in setting)


def load_sweep(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"Sweep file {path} does not exist; see experiments/sweeps/.")
    spec = importlib.util.spec_from_file_location("sweep_definition", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sweep = module.get_sweep()
    unknown = set(sweep) - KEYS
    if unknown:
        raise ValueError(f"Unknown sweep key(s) {sorted(unknown)} in {path}.")
    if ("variants" in sweep) == ("grid" in sweep):
        raise ValueError(f"{path}: give exactly one of 'variants' and 'grid'.")
    if "tune" in sweep and not sweep.get("overrides", {}).get("data.validation_examples"):
        raise ValueError(f"{path}: tuning chooses on a validation split; set "
                         "'data.validation_examples' in 'overrides'.")
    if "tune" in sweep:
        _check_tune(sweep, path)
    if "precision" in sweep:
        if not sweep["precision"] > 0:
            raise ValueError(f"{path}: 'precision' is the interval's half-width in points of "
                             f"top-1 error and must be positive; got {sweep['precision']!r}.")
        if len(sweep.get("seeds", [0])) < 2 or max_seeds(sweep) < len(sweep["seeds"]):
            raise ValueError(f"{path}: 'precision' needs at least 2 'seeds' in the first round "
                             "(an interval needs two differences) and 'max_seeds' no fewer.")
    return sweep


def max_seeds(sweep: dict[str, Any]) -> int:
    return sweep.get("max_seeds", DEFAULT_MAX_SEEDS)


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


def _per_variant(tune: dict[str, Any]) -> bool:
    return any(isinstance(value, dict) for value in tune.values())


def _check_tune(sweep: dict[str, Any], path: str) -> None:
    tune = sweep["tune"]
    if not _per_variant(tune):
        return
    if not all(isinstance(value, dict) for value in tune.values()):
        raise ValueError(f"{path}: 'tune' is either one grid {{config key: [values]}} for "
                         "every variant or {variant: grid} for each; it mixes the two.")
    names = [name for name, _ in expand(sweep)]
    missing, unknown = set(names) - set(tune), set(tune) - set(names)
    if missing or unknown:
        raise ValueError(f"{path}: 'tune' gives a grid per variant, so it names each variant "
                         f"once: {'no grid for ' + str(sorted(missing)) if missing else ''}"
                         f"{'; ' if missing and unknown else ''}"
                         f"{'no variant ' + str(sorted(unknown)) if unknown else ''} "
                         f"(the variants: {names}).")


def tuning_settings(sweep: dict[str, Any], variant: str) -> list[tuple[tuple[str, Any], ...]]:
    """Every point of the variant's ``tune`` grid (one empty setting without one)."""
    grid = sweep.get("tune", {})
    if _per_variant(grid):
        grid = grid[variant]
    return [tuple(zip(grid, values)) for values in itertools.product(*grid.values())]


def _run(sweep: dict[str, Any], variant: str, overrides: dict[str, Any], seed: int,
         setting: tuple[tuple[str, Any], ...], quick: bool) -> Run:
    shared = dict(sweep.get("overrides", {}))
    if quick:
        shared.update(sweep.get("quick", {}))
    merged = {**shared, **overrides, **dict(setting), "seed": seed}
    return Run(variant, seed, tuple(sorted(merged.items())), setting)


def plan(sweep: dict[str, Any], quick: bool = False) -> list[Run]:
    """The first stage: every variant x seed, or with ``tune`` every variant x grid point
    with the first seed."""
    seeds = sweep.get("seeds", [0])
    if "tune" in sweep:
        return [_run(sweep, variant, overrides, seeds[0], setting, quick)
                for variant, overrides in expand(sweep)
                for setting in tuning_settings(sweep, variant)]
    return plan_seeds(sweep, {variant: () for variant, _ in expand(sweep)}, quick)


def plan_seeds(sweep: dict[str, Any], choices: dict[str, tuple], quick: bool = False,
               seeds: dict[str, list[int]] | None = None) -> list[Run]:
    """Each variant's seeds at its chosen setting (``()`` without tuning; in a tuned
    sweep, the first seed's run is the tuning run of that setting): the sweep's
    ``seeds``, or ``seeds[variant]`` in a later round of a precision sweep."""
    default = sweep.get("seeds", [0])
    return [_run(sweep, variant, overrides, seed, choices[variant], quick)
            for variant, overrides in expand(sweep) if variant in choices
            for seed in (seeds or {}).get(variant, default)]


@functools.cache
def _experiment(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("sweep_base_experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolved_config(sweep: dict[str, Any], run: Run) -> Any:
    """The config the run trains with: the base experiment with the run's overrides, as
    ``python -m alexnet_jax.main`` builds it from ``command``'s flags.  A key the config
    does not have is a ``SweepError`` naming the run."""
    config = _experiment(os.path.join(REPO, sweep["base"])).get_config()
    config.progress_bar = False
    config.lock()  # as config_flags locks it
    for key, _ in run.overrides:
        _check_key(config, key, run)
    try:
        config.update_from_flattened_dict(dict(run.overrides))
    except (KeyError, AttributeError, TypeError, ValueError) as error:
        raise SweepError(f"variant {run.variant!r} (run {run.name}): "
                         f"{' '.join(str(error).split())}") from None
    return config


def _check_key(config: Any, key: str, run: Run) -> None:
    node, path = config, []
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            close = difflib.get_close_matches(part, list(node.keys()) if hasattr(node, "keys")
                                              else [], n=1)
            hint = f"; did you mean {'.'.join([*path, close[0]])!r}" if close else ""
            raise SweepError(f"variant {run.variant!r} (run {run.name}): the config has no key "
                             f"{key!r}{hint}? (alexnet_jax/training/config_base.py lists every "
                             "key.)")
        node, path = node[part], [*path, part]


def read_summary(workdir: str, run: Run) -> dict[str, Any] | None:
    path = os.path.join(workdir, run.name, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def choose(sweep: dict[str, Any], runs: Sequence[Run], workdir: str
           ) -> tuple[dict[str, tuple], list[dict[str, Any]]]:
    """Each variant's setting with the lowest ``select`` among its finished tuning runs
    (a diverged or unfinished run cannot be chosen), and every tuning run's outcome."""
    key = sweep.get("select", DEFAULT_SELECT)
    outcomes, choices = [], {}
    for run in runs:
        summary = read_summary(workdir, run)
        score = None if summary is None else summary.get(key)
        if summary is not None and score is None:
            raise ValueError(f"{run.name}/summary.json has no {key!r} to choose on; is "
                             "data.validation_examples set?")
        usable = score is not None and math.isfinite(score)
        outcomes.append({"run": run, "score": score if usable else None,
                         "test_top1_error": summary.get("test_top1_error") if summary else None})
    for variant, _ in expand(sweep):
        candidates = [o for o in outcomes if o["run"].variant == variant and o["score"] is not None]
        if candidates:
            best = min(candidates, key=lambda o: o["score"])
            choices[variant] = best["run"].setting
    return choices, outcomes


def command(sweep: dict[str, Any], run: Run, workdir: str,
            seeds: Sequence[int] | None = None) -> list[str]:
    """The run's command line: the one trainer, ``python -m alexnet_jax.main``; with
    ``seeds``, those seeds of the run's variant and setting in one program (``--seeds``, the
    workdir's seed as ``{seed}``)."""
    base = os.path.join(REPO, sweep["base"])
    flags = [f"--config.{key}={_flag_value(value)}" for key, value in run.overrides
             if not (seeds and key == "seed")]
    name = run.name if not seeds else dataclasses.replace(run, seed=SEED).name
    return [sys.executable, "-m", "alexnet_jax.main", "--config", base,
            "--workdir", os.path.join(workdir, name), "--config.progress_bar=False", *flags,
            *([f"--seeds={','.join(map(str, seeds))}"] if seeds else [])]


def _flag_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def is_finished(workdir: str, run: Run) -> bool:
    """Its summary is written, or it diverged (a result too: running it again would not
    change it)."""
    path = os.path.join(workdir, run.name)
    return os.path.exists(os.path.join(path, "summary.json")) or diverged_at(path)


def why_unfinished(workdir: str, run: Run) -> str:
    """The run's own last word: its ``error:`` line (a NaN loss, say), or that it has not run."""
    return _last_word(os.path.join(workdir, run.name))


def _last_word(run_dir: str) -> str:
    path = os.path.join(run_dir, "console.log")
    if not os.path.exists(path):
        return "not run yet"
    with open(path) as f:
        errors = [line.strip() for line in f if line.startswith("error:")]
    return errors[-1] if errors else "stopped before its summary (run the sweep again to resume)"


def diverged(workdir: str, run: Run) -> bool:
    """Its loss became NaN or infinite (its console's last ``error:`` line says so)."""
    return diverged_at(os.path.join(workdir, run.name))


def diverged_at(run_dir: str) -> bool:
    last_word = _last_word(run_dir)
    return last_word.startswith("error:") and ("became nan" in last_word
                                               or "became inf" in last_word)
