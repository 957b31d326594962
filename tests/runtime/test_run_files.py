"""A run's files: the workdir's write check, metrics.jsonl cut back on resume."""
import json
import os
import threading

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax.runtime import run_files


def test_processes_sharing_a_workdir_do_not_trip_over_its_write_check(tmp_path):
    """Every process of a multi-host run checks the shared workdir at once; with one probe
    file name, one process removed the other's probe and died (its peer then waited out
    JAX's 2-minute topology exchange: the two-process test's CI failure)."""
    errors = []

    def check_many_times():
        try:
            for _ in range(300):
                run_files.check_workdir(str(tmp_path / "shared"))
        except OSError as error:
            errors.append(error)

    threads = [threading.Thread(target=check_many_times) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert os.listdir(tmp_path / "shared") == []  # the probes leave nothing behind


def test_unwritable_workdir_is_an_error_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="Cannot write to workdir"):
        run_files.check_workdir(str(blocker / "run"))


def test_a_torn_last_line_of_the_metrics_is_dropped_with_a_warning(tmp_path, capsys):
    lines = [json.dumps({"step": step, "train_loss": 1.0}) for step in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "train_l')
    run_files.truncate_metrics(str(tmp_path), 2)
    assert (tmp_path / "metrics.jsonl").read_text() == "\n".join(lines[:2]) + "\n"
    assert "dropped line 4 of" in capsys.readouterr().err
