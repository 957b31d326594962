"""Several seeds trained as one vmapped program: each seed is its own run."""
import json
import os

import jax
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

import support  # noqa: E402
from alexnet_jax.runtime import metric_writer
from alexnet_jax.runtime.errors import ConfigError  # noqa: E402
from alexnet_jax.training import config_base, experiment, seeds
from support import DATA_DIR, HAVE_FASHION_MNIST  # noqa: E402


def short_config():
    """Real Fashion-MNIST, 2 epochs of 10 steps.  The paper's init keeps this short run
    well-conditioned, so that rounding (the vmapped program sums in another order)
    stays rounding: from the scaled init it grows by 1e4 within 20 steps, as any change
    of summation order does (docs/performance.md)."""
    config = support.tiny_config(epochs=2, every_steps=0, data_dir=DATA_DIR,
                                 train_examples=320, test_examples=400)
    config.model.init = "paper"
    config.optim.schedule = "constant"
    config.optim.learning_rate = 0.05
    return config


@pytest.mark.long
@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="Fashion-MNIST absent: run `make data`")
def test_each_vmapped_seed_is_its_own_run(tmp_path):
    """Two seeds in one program against each run alone: the same config hash (a sweep
    takes one for the other), the step-by-step training losses overlaid, the same test
    error to one example of 400, and each seed's own data order, dropout and initialisation (the
    seeds' losses differ from the first step)."""
    config = short_config()
    together = seeds.train_seeds(config, [0, 1], str(tmp_path / "vmapped-seed{seed}"))
    for seed, summary in zip((0, 1), together):
        alone = experiment.train_and_evaluate(seeds.seed_config(config, seed),
                                         str(tmp_path / f"alone-seed{seed}"))
        assert summary["config_hash"] == alone["config_hash"]
        assert abs(summary["test_top1_error"] - alone["test_top1_error"]) <= 1 / 400 + 1e-9
        # The vmapped program may sum in another order (another kernel for a batch of
        # seeds): a few float32 units of each loss.  Measured: bit for bit on an AVX-512
        # EPYC, at most 1.9e-7 relative under AVX2; rtol 1e-5 leaves 50x, while another
        # seed's data order or dropout changes the first loss already (asserted below).
        np.testing.assert_allclose(summary["test_loss"], alone["test_loss"], rtol=1e-5)
        curves = [[r["train_loss"] for r in metric_writer.read_metrics(str(tmp_path / run))
                   if "train_loss" in r] for run in (f"vmapped-seed{seed}", f"alone-seed{seed}")]
        assert len(curves[0]) == 20
        np.testing.assert_allclose(curves[0], curves[1], rtol=1e-5)
        config_json = json.load(open(tmp_path / f"vmapped-seed{seed}" / "config.json"))
        assert config_json["seed"] == seed and summary["vmapped_seeds"] == 2
    first_losses = [metric_writer.read_metrics(str(tmp_path / f"vmapped-seed{s}"))[0]["train_loss"]
                    for s in (0, 1)]
    assert first_losses[0] != first_losses[1]


def test_seeds_resume_from_their_shared_checkpoint_exactly(tmp_path):
    """Stopped after its first epoch and resumed, the group ends where a group that ran
    straight through does, bit for bit, each seed, its moving average of the weights
    included."""
    config = support.tiny_config(epochs=2, every_steps=0)
    config.optim.schedule = "constant"
    config.optim.ema_decay = 0.5
    with tfds.testing.mock_data(num_examples=96):
        straight = seeds.train_seeds(config, [3, 5], str(tmp_path / "straight-seed{seed}"))
        first = support.tiny_config(epochs=1, every_steps=0)
        first.optim.schedule = "constant"
        first.optim.ema_decay = 0.5
        seeds.train_seeds(first, [3, 5], str(tmp_path / "cut-seed{seed}"))
        resumed = seeds.train_seeds(config, [3, 5], str(tmp_path / "cut-seed{seed}"))
    assert os.path.isdir(tmp_path / "cut-seeds3-5" / "checkpoints" / "latest")
    for a, b in zip(straight, resumed):
        assert a["test_loss"] == b["test_loss"] and a["steps"] == b["steps"] == 6
        assert a["ema_test_loss"] == b["ema_test_loss"] != a["test_loss"]


def test_seeds_need_a_workdir_per_seed_and_one_device():
    config = config_base.base_config()
    with pytest.raises(ConfigError, match=r"--workdir 'runs/x' must hold \{seed\}"):
        seeds.train_seeds(config, [0, 1], "runs/x")
    config.parallelism = "data"
    with pytest.raises(ConfigError, match="set parallelism=single"):
        seeds.train_seeds(config, [0, 1], "runs/x-{seed}")


def test_a_plateau_lowers_only_the_seeds_whose_error_stalled():
    """The learning-rate scale of a stacked optimiser state, multiplied per seed."""
    run = support.build(support.tiny_config())
    stacked = experiment.stack([run.state, run.state, run.state])
    from alexnet_jax.training import optim
    scaled = optim.scale_learning_rate(stacked.opt_state, np.asarray([1.0, 0.1, 1.0], np.float32))
    np.testing.assert_allclose(jax.device_get(scaled.hyperparams["lr_scale"]), [1.0, 0.1, 1.0])
