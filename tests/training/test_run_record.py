"""A run's record: its identity across resumes, and TensorBoard's hyperparameters."""
import json

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax.model import components, networks  # noqa: E402
from alexnet_jax.training import config_base, experiment, run_record  # noqa: E402
from support import tiny_config  # noqa: E402


def test_a_resume_with_other_settings_is_recorded_in_the_runs_identity(tmp_path, capsys):
    """A finished run resumed with more epochs and another rate says so, and its
    config_hash (what sweeps take for its identity) is no longer a fresh run's."""
    workdir = str(tmp_path)
    with tfds.testing.mock_data(num_examples=96):
        experiment.train_and_evaluate(tiny_config(epochs=1, every_steps=0), workdir)
        same = tiny_config(epochs=1, every_steps=0)
        same.log_every_steps, same.eval_batch_size = 3, 20  # how, not what: the same run
        same.parallelism, same.checkpoint.keep = "auto", 5
        assert run_record.resume_changes(workdir, same) == []
        longer = tiny_config(epochs=2, every_steps=0)
        longer.optim.learning_rate = 0.02
        summary = experiment.train_and_evaluate(longer, workdir)
    assert "warning: resumed" in capsys.readouterr().err
    recorded = json.load(open(tmp_path / "config.json"))
    assert recorded[run_record.RESUMES] == [{"step": 3, "changed": {
        "num_epochs": [1, 2], "optim.learning_rate": [0.01, 0.02]}}]
    assert summary["config_hash"] == recorded["config_hash"] != config_base.config_hash(longer)


def test_tensorboards_hyperparameters_are_every_model_and_optim_key_of_the_base_config(
        monkeypatch):
    """A key added to the base config's model or optim section reaches TensorBoard's
    HParams without a list to edit; the normalisation's own settings only for its norm."""
    original = config_base.base_config

    def with_a_new_key():
        config = original()
        config.optim.new_setting = 0.25
        return config

    monkeypatch.setattr(config_base, "base_config", with_a_new_key)
    config = with_a_new_key()
    config.model.variant = "small"
    config.model.norm = "groupnorm"
    model_config = networks.config_from(config.model, (28, 28, 1), 10)
    values = run_record.hyperparameters(config, model_config)
    expected = {f"optim.{key}" for key in config.optim} | {"batch_size", "num_epochs", "seed"}
    assert expected <= set(values) and values["optim.new_setting"] == 0.25
    assert values["model.towers"] == 2 and values["model.dropout_rate"] == 0.5  # resolved
    assert values["optim.step_epochs"] == "(30, 60, 80)"  # a sequence, as text
    norm_keys = {f"model.{key}" for key in components.all_norm_options()} & set(values)
    assert norm_keys == {f"model.{key}" for key, _ in model_config.norm_options} != set()
