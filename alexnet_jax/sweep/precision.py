"""When a comparison is settled: the verdict a paired interval supports, and the seeds a
variant still needs.

A variant is compared with the baseline seed by seed (the same seed: the same data order
and initial draws), and the mean difference in top-1 error gets its 95% interval
(Student's t).  With a ``precision`` (the interval's half-width, in points, that settles
the question) the verdict is one of:

* ``significant``: the interval excludes zero: "a difference of X ± Y points";
* ``bounded``: the interval holds zero and is at most the precision wide: "no difference
  larger than Z points", Z the interval's farther end;
* ``inconclusive``: neither, at N seeds: more seeds would narrow it.

A precision sweep runs seeds in rounds: after each round, every variant still
inconclusive gets the seeds that its differences so far say would bring its interval to
the precision (``seeds_needed``), up to the sweep's ``max_seeds``; the baseline runs every
seed a variant runs.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from scipy import stats


def t_quantile(n: int) -> float:
    """The 97.5% quantile of Student's t with n - 1 degrees of freedom."""
    return float(stats.t.ppf(0.975, n - 1))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, std


def interval(differences: Sequence[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95% confidence interval (Student's t; NaN for
    fewer than two values)."""
    mean, std = mean_std(differences)
    n = len(differences)
    return mean, (t_quantile(n) * std / math.sqrt(n) if n > 1 else float("nan"))


def difference_interval(values: Sequence[float], baseline: Sequence[float]
                        ) -> tuple[float, float]:
    """``interval`` of the differences ``values[i] - baseline[i]``, which share seed i:
    pairing removes what the seed does to both (data order, initialisation)."""
    return interval([v - b for v, b in zip(values, baseline)])


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What a variant's paired differences (in error fractions) say at ``precision``
    (in fractions too; None: only significance)."""

    seeds: int
    mean: float
    half_width: float
    precision: float | None

    @property
    def kind(self) -> str:
        if math.isnan(self.half_width):
            return "inconclusive"
        if abs(self.mean) > self.half_width:
            return "significant"
        if self.precision is not None and self.half_width <= self.precision:
            return "bounded"
        return "inconclusive"

    @property
    def settled(self) -> bool:
        return self.kind != "inconclusive"

    def text(self) -> str:
        """In points of top-1 error, as the report states it."""
        mean, half = 100 * self.mean, 100 * self.half_width
        if self.kind == "significant":
            return f"a difference of {mean:+.2f} ± {half:.2f} points (significant)"
        if self.kind == "bounded":
            return (f"no difference larger than {abs(mean) + half:.2f} points "
                    f"({mean:+.2f} ± {half:.2f})")
        width = "" if math.isnan(half) else f" (± {half:.2f})"
        return f"inconclusive at {self.seeds} seed{'s' if self.seeds != 1 else ''}{width}"


def seeds_needed(differences: Sequence[float], precision: float, max_seeds: int) -> int:
    """The fewest seeds whose interval would be at most ``precision`` wide if the
    differences keep the spread they have (t(n-1) * sd / sqrt(n) <= precision), at least
    one more than now and at most ``max_seeds``."""
    n = len(differences)
    _, std = mean_std(differences)
    target = n + 1
    while target < max_seeds and t_quantile(target) * std / math.sqrt(target) > precision:
        target += 1
    return min(max(target, n + 1), max_seeds)


def next_round(differences: dict[str, Sequence[float]], precision: float, max_seeds: int
               ) -> dict[str, int]:
    """Variant -> the seeds it should have after the next round, for every variant whose
    verdict is still inconclusive and that has fewer than ``max_seeds``; the others are
    done."""
    targets = {}
    for variant, diffs in differences.items():
        if Verdict(len(diffs), *interval(diffs), precision).settled or len(diffs) >= max_seeds:
            continue
        targets[variant] = seeds_needed(diffs, precision, max_seeds)
    return targets
