"""The paper's SGD against a hand-written loop, the schedules and the plateau policy."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax.training import optim
from alexnet_jax.training.config_base import base_config


def quadratic_grad(w):
    # A fixed toy problem: gradient of 0.5 * sum(a * (w - 1)^2).
    a = np.array([3.0, 0.5, 1.0, 2.0])
    return a * (w - 1.0)


def test_optax_chain_equals_the_papers_update_rule_with_a_learning_rate_change():
    config = base_config().optim
    config.schedule = "constant"
    config.learning_rate = 0.1
    w0 = np.array([0.3, -2.0, 5.0, 1.5])
    tx = optim.optimizer_from_config(config, jnp.asarray(w0), steps_per_epoch=10, num_epochs=1)
    state = tx.init(jnp.asarray(w0))
    w = jnp.asarray(w0)
    w_ref, v_ref, lr = w0.copy(), np.zeros_like(w0), 0.1
    for step in range(12):
        if step == 6:  # the plateau policy divides the learning rate by 10
            state = optim.scale_learning_rate(state, 0.1)
            lr = 0.01
        updates, state = tx.update(jnp.asarray(quadratic_grad(np.asarray(w))), state, w)
        w = optax.apply_updates(w, updates)
        # The paper, Section 5: v <- 0.9 v - 0.0005 e w - e g;  w <- w + v.
        v_ref = 0.9 * v_ref - 0.0005 * lr * w_ref - lr * quadratic_grad(w_ref)
        w_ref = w_ref + v_ref
        np.testing.assert_allclose(np.asarray(w), w_ref, rtol=1e-5, atol=1e-6)
        assert float(optim.current_learning_rate(state)) == pytest.approx(lr)


def test_decay_mask_spares_biases_when_asked():
    config = base_config().optim
    config.schedule = "constant"
    config.momentum = 0.0
    config.decay_biases_and_norms = False
    params = {"conv1": {"kernel": jnp.ones(3), "bias": jnp.ones(3)}}
    tx = optim.optimizer_from_config(config, params, 10, 1)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates["conv1"]["kernel"], -0.01 * 0.0005)
    np.testing.assert_array_equal(updates["conv1"]["bias"], 0.0)


def test_step_schedule_divides_at_the_given_epochs():
    config = base_config().optim
    config.schedule = "step"
    config.step_epochs = (2, 3)
    schedule = optim.schedule_from_config(config, steps_per_epoch=5, num_epochs=4)
    assert [float(schedule(s)) for s in (0, 9, 10, 14, 15)] == pytest.approx(
        [0.01, 0.01, 0.001, 0.001, 0.0001])


def test_cosine_schedule_warms_up_then_decays_to_zero():
    config = base_config().optim
    config.schedule = "cosine"
    config.warmup_epochs = 1
    schedule = optim.schedule_from_config(config, steps_per_epoch=10, num_epochs=3)
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(0.01)
    assert float(schedule(30)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("warmup_epochs", [0, 1])
def test_linear_schedule_warms_up_then_falls_in_a_straight_line_to_zero(warmup_epochs):
    config = base_config().optim
    config.schedule = "linear"
    config.warmup_epochs = warmup_epochs
    schedule = optim.schedule_from_config(config, steps_per_epoch=10, num_epochs=3)
    start = 10 * warmup_epochs
    if warmup_epochs:
        assert [float(schedule(s)) for s in (0, 5)] == pytest.approx([0.0, 0.005])
    # From the peak at the warmup's end down to zero at the last step, by equal steps.
    decay_steps = 30 - start
    expected = [0.01 * (1 - (s - start) / decay_steps) for s in range(start, 31)]
    assert [float(schedule(s)) for s in range(start, 31)] == pytest.approx(expected, abs=1e-9)


def test_unknown_schedule_lists_the_valid_ones():
    config = base_config().optim
    config.schedule = "exponential"
    with pytest.raises(ValueError, match="plateau, step, cosine, linear, constant"):
        optim.schedule_from_config(config, 10, 1)


def test_plateau_divides_by_ten_exactly_when_the_error_stops_improving_at_most_three_times():
    policy = optim.PlateauPolicy(factor=0.1, patience=2, max_reductions=3)
    errors = [0.5, 0.4, 0.41, 0.40, 0.39, 0.39, 0.395, 0.38, 0.38, 0.38, 0.38, 0.38, 0.38, 0.38]
    reduce_now = [policy.update(e) for e in errors]
    assert [i for i, reduce in enumerate(reduce_now) if reduce] == [3, 6, 9]
    assert policy.reductions == 3


def test_plateau_min_delta_ignores_tiny_improvements_and_state_round_trips():
    policy = optim.PlateauPolicy(patience=1, min_delta=0.01)
    assert not policy.update(0.5)
    assert policy.update(0.495)  # better, but by less than min_delta
    restored = optim.PlateauPolicy.from_state_dict(policy.state_dict())
    assert restored == policy
    # Checkpoints written when the policy kept a copy of the scale still read.
    assert optim.PlateauPolicy.from_state_dict({**policy.state_dict(), "scale": 0.1}) == policy
