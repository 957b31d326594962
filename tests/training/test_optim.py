"""The optimisers against hand-written updates, the schedules, the plateau policy, the
learning-rate helpers through wrappers, and gradient accumulation."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import support
from alexnet_jax.runtime.errors import ConfigError
from alexnet_jax.training import config_base, optim
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
        # float32 iterates against float64: each of 12 steps rounds w (|w| <= 5) by half
        # an ulp, ~12 x 3e-7 = 4e-6 at most; a wrong rule (the rate after the momentum,
        # decoupled decay) moves w by 1e-3 or more within these steps.
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


def quadratic_problem(name, **options):
    config = base_config().optim
    config.optimizer, config.schedule, config.learning_rate = name, "constant", 0.05
    for key, value in options.items():
        config[key] = value
    params = {"a": jnp.asarray([0.3, -2.0, 5.0, 1.5]), "b": jnp.asarray([[0.5, -1.0], [2.0, 0.1]])}
    return config, params


def quadratic_grads(params):
    return {k: 2.0 * (v - 1.0) * (1.0 + jnp.arange(v.size).reshape(v.shape)) for k, v in
            params.items()}


def run_optimizer(config, params, steps=6):
    tx = optim.optimizer_from_config(config, params, 10, 1)
    state, trace = tx.init(params), []
    for _ in range(steps):
        updates, state = tx.update(quadratic_grads(params), state, params)
        params = optax.apply_updates(params, updates)
        trace.append(jax.device_get(params))
    return trace


def test_adamw_equals_adam_with_decoupled_decay_by_hand():
    config, params = quadratic_problem("adamw", adam_b1=0.8, adam_b2=0.99, adam_eps=1e-6)
    trace = run_optimizer(config, params)
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v2 = {k: np.zeros_like(v) for k, v in w.items()}
    for t, got in enumerate(trace, 1):  # Loshchilov and Hutter (2019), Algorithm 2
        g = {k: np.asarray(x, np.float64) for k, x in quadratic_grads(w).items()}
        for k in w:
            m[k] = 0.8 * m[k] + 0.2 * g[k]
            v2[k] = 0.99 * v2[k] + 0.01 * g[k] ** 2
            step = (m[k] / (1 - 0.8 ** t)) / (np.sqrt(v2[k] / (1 - 0.99 ** t)) + 1e-6)
            w[k] = w[k] - 0.05 * (step + 0.0005 * w[k])
            np.testing.assert_allclose(got[k], w[k], rtol=1e-5, atol=1e-6)


def test_lars_scales_each_layers_step_by_its_trust_ratio_by_hand():
    config, params = quadratic_problem("lars", momentum=0.9, lars_trust_coefficient=0.01)
    trace = run_optimizer(config, params)
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    velocity = {k: np.zeros_like(v) for k, v in w.items()}
    for got in trace:  # You, Gitman and Ginsburg (2017), Algorithm 1, layer by layer
        g = {k: np.asarray(x, np.float64) for k, x in quadratic_grads(w).items()}
        for k in w:
            decayed = g[k] + 0.0005 * w[k]
            trust = 0.01 * np.linalg.norm(w[k]) / np.linalg.norm(decayed)
            velocity[k] = 0.9 * velocity[k] + 0.05 * trust * decayed
            w[k] = w[k] - velocity[k]
            np.testing.assert_allclose(got[k], w[k], rtol=1e-5, atol=1e-7)


def test_every_optimizer_is_one_entry_whose_options_are_config_keys_and_checked():
    config = base_config()
    config.model.variant = "small"
    for name, entry in optim.OPTIMIZERS.items():
        for key, default in entry.options:
            assert config.optim[key] == default
        config.optim.optimizer = name
        config_base.validate(config, 1, 1)
    config.optim.optimizer = "adamw"
    config.optim.adam_b2 = 1.0
    with pytest.raises(ConfigError, match=r"config.optim.adam_b2=1.0 must be in \[0, 1\)"):
        config_base.validate(config, 1, 1)
    config.optim.optimizer = "adam"
    with pytest.raises(ConfigError, match="sgd, adamw, lars"):
        config_base.validate(config, 1, 1)


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_the_learning_rate_helpers_see_through_accumulation(name):
    """The plateau policy's scale and the logged rate, with the optimiser wrapped in
    MultiSteps; the schedule counts updates: 4 steps of 8 an epoch are 2 updates."""
    config, params = quadratic_problem(name, accumulate_steps=4)
    config.schedule = "linear"
    tx = optim.optimizer_from_config(config, params, steps_per_epoch=8, num_epochs=1)
    state = tx.init(params)
    assert float(optim.current_learning_rate(state)) == pytest.approx(0.05)
    for _ in range(8):  # the second update's rate is the schedule's at update 1 of 2
        _, state = tx.update(quadratic_grads(params), state, params)
    assert float(optim.current_learning_rate(state)) == pytest.approx(0.025)  # not 1 of 8
    state = optim.scale_learning_rate(state, 0.1)
    assert float(optim.lr_scale(state)) == pytest.approx(0.1)
    assert float(optim.current_learning_rate(state)) == pytest.approx(0.0025)


def test_accumulated_steps_give_the_update_of_one_batch_of_their_size():
    """4 steps of 8 examples, accumulated, against 1 step of 32: the same update but for
    float32 summation order (a logic error, a sum for a mean or a step applied early, moves
    it by a factor of 4 or more)."""
    one, accumulated, initial = support.accumulation_pair()
    for a, b, p in zip(jax.tree.leaves(one), jax.tree.leaves(accumulated),
                       jax.tree.leaves(initial)):
        update = np.abs(a - p).max()
        bound = 1e-3 * update + 4 * np.spacing(np.abs(p).max())
        np.testing.assert_allclose(b - p, a - p, atol=bound)
