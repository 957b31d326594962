"""One writer per workdir."""
import json
import os
import subprocess
import sys
import time

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax.runtime.errors import WorkdirInUseError  # noqa: E402
from alexnet_jax.runtime.workdir_lock import WorkdirLock  # noqa: E402
from alexnet_jax.training import experiment
from support import files_under, tiny_config  # noqa: E402


def test_a_second_run_on_a_held_workdir_is_refused_before_it_writes(tmp_path):
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    with WorkdirLock(workdir):
        with pytest.raises(WorkdirInUseError, match=rf"in use by another run \(pid {os.getpid()} "
                                                    r"on .*, since .*\); wait for it"):
            experiment.train_and_evaluate(tiny_config(), workdir)
        assert files_under(workdir) == [".lock"]
    assert files_under(workdir) == []  # released


def test_a_lock_whose_holder_is_gone_is_taken_over_saying_so(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    with open(tmp_path / ".lock", "w") as f:
        json.dump({"host": os.uname().nodename, "pid": int(dead), "since": "earlier"}, f)
    with WorkdirLock(str(tmp_path)):
        assert json.load(open(tmp_path / ".lock"))["pid"] == os.getpid()
    assert f"took over the lock on {tmp_path}: its holder (pid {dead}" in capsys.readouterr().err


def test_a_lock_its_holder_left_unwritten_is_taken_over(tmp_path, capsys):
    """A holder killed between creating the lock and writing it leaves it empty: once it is
    older than a write takes, it is a lock whose holder is gone."""
    (tmp_path / ".lock").write_text("")
    os.utime(tmp_path / ".lock", (time.time() - 60, time.time() - 60))
    with WorkdirLock(str(tmp_path)):
        assert json.load(open(tmp_path / ".lock"))["pid"] == os.getpid()
    assert "took over the lock" in capsys.readouterr().err
