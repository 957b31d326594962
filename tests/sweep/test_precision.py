"""The precision rule's statistics against hand-computed cases."""
import math
import os

from alexnet_jax import sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_paired_difference_and_interval_by_hand():
    # differences 0.01, 0.03, 0.02: mean 0.02, sd 0.01, t(0.975, 2) = 4.302653
    mean, half = sweep.difference_interval([0.11, 0.13, 0.12], [0.10, 0.10, 0.10])
    assert math.isclose(mean, 0.02, abs_tol=1e-12)
    assert math.isclose(half, 4.302653 * 0.01 / math.sqrt(3), rel_tol=1e-6)
    assert sweep.mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, math.sqrt(5 / 3))


def test_verdicts_by_hand():
    from alexnet_jax.sweep.precision import Verdict, difference_interval
    # differences 0.01, 0.03, 0.02: mean 0.02, sd 0.01, t(0.975, 2) = 4.302653: ± 0.0248
    mean, half = difference_interval([0.11, 0.13, 0.12], [0.10, 0.10, 0.10])
    assert Verdict(3, mean, half, None).text() == "inconclusive at 3 seeds (± 2.48)"
    # ten differences 0.004 ± 0.001 (alternating 0.003, 0.005): sd 0.001054, t(9) = 2.262157
    values = [0.003, 0.005] * 5
    mean, half = difference_interval(values, [0.0] * 10)
    assert Verdict(10, mean, half, 0.003).kind == "significant"
    assert Verdict(10, mean, half, 0.003).text() == \
        "a difference of +0.40 ± 0.08 points (significant)"
    # differences spanning zero, narrow: bounded by the interval's farther end
    mean, half = difference_interval([0.001, -0.001] * 5, [0.0] * 10)
    verdict = Verdict(10, mean, half, 0.003)
    assert verdict.kind == "bounded"
    assert verdict.text() == "no difference larger than 0.08 points (+0.00 ± 0.08)"
    assert Verdict(10, mean, half, 0.0005).text() == "inconclusive at 10 seeds (± 0.08)"


def test_seeds_needed_projects_the_spread_to_the_precision():
    from alexnet_jax.sweep.precision import next_round, seeds_needed, t_quantile
    diffs = [0.004, -0.002, 0.001]  # sd 0.003: t(n-1) * 0.003 / sqrt(n) <= 0.003 from n = 7
    assert t_quantile(6) * 0.003 / math.sqrt(6) > 0.003 >= t_quantile(7) * 0.003 / math.sqrt(7)
    assert seeds_needed(diffs, 0.003, 10) == 7
    assert seeds_needed(diffs, 0.003, 5) == 5  # capped
    assert seeds_needed(diffs, 0.1, 10) == 4  # at least one more
    assert next_round({"a": diffs, "significant": [0.01, 0.011, 0.012],
                       "capped": [0.004, -0.002, 0.001, 0.0, 0.001]}, 0.003, 5) == {"a": 5}
