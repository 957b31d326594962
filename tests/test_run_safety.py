"""Nothing silently wrong: one writer per workdir, a resumed run's identity records its changes,
a diverged run keeps no unsound checkpoint and says how to go on, run files survive a
crash mid-write, a sweep's trainers die with it."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax import (  # noqa: E402
    checkpoints,
    command_line,
    config_base,
    experiment,
    metrics,
    run_io,
)
from alexnet_jax.errors import MismatchError, WorkdirInUseError  # noqa: E402
from alexnet_jax.workdir_lock import WorkdirLock  # noqa: E402
from support import tiny_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def files_under(directory):
    return sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, _, names in os.walk(directory) for name in names)


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


def test_a_resume_with_other_settings_is_recorded_in_the_runs_identity(tmp_path, capsys):
    """A finished run resumed with more epochs and another rate says so, and its
    config_hash (what sweeps take for its identity) is no longer a fresh run's."""
    workdir = str(tmp_path)
    with tfds.testing.mock_data(num_examples=96):
        experiment.train_and_evaluate(tiny_config(epochs=1, every_steps=0), workdir)
        same = tiny_config(epochs=1, every_steps=0)
        same.log_every_steps, same.eval_batch_size = 3, 20  # how, not what: the same run
        same.parallelism, same.checkpoint.keep = "auto", 5
        assert run_io.resume_changes(workdir, same) == []
        longer = tiny_config(epochs=2, every_steps=0)
        longer.optim.learning_rate = 0.02
        summary = experiment.train_and_evaluate(longer, workdir)
    assert "warning: resumed" in capsys.readouterr().err
    recorded = json.load(open(tmp_path / "config.json"))
    assert recorded[run_io.RESUMES] == [{"step": 3, "changed": {
        "num_epochs": [1, 2], "optim.learning_rate": [0.01, 0.02]}}]
    assert summary["config_hash"] == recorded["config_hash"] != config_base.config_hash(longer)


def test_best_without_latest_is_refused_with_the_two_ways_on(tmp_path):
    workdir = str(tmp_path)
    with tfds.testing.mock_data(num_examples=96):
        experiment.train_and_evaluate(tiny_config(epochs=1, every_steps=0), workdir)
        import shutil
        shutil.rmtree(tmp_path / "checkpoints" / "latest")
        with pytest.raises(MismatchError, match=r"latest holds no checkpoint, but .*best holds "
                           r"step 3: .*--config.restore_from=.*best/3; to start over here: "
                           "remove"):
            experiment.train_and_evaluate(tiny_config(epochs=1, every_steps=0), workdir)


def test_a_diverged_run_sets_its_blown_up_checkpoints_aside_and_its_advice_trains(tmp_path):
    """A learning rate of 30 blows the loss up within a few steps, checkpointing every step:
    the checkpoints whose parameters gave the bad loss are moved aside, and the way on
    that the line gives (a new run from the newest kept weights, a lower rate) trains."""
    config = tiny_config(epochs=1, every_steps=1)
    config.optim.learning_rate = 30.0
    workdir = str(tmp_path / "diverged")
    with tfds.testing.mock_data(num_examples=96):
        with pytest.raises(metrics.Diverged) as stopped:
            experiment.train_and_evaluate(config, workdir)
        bad = stopped.value.step
        kept = checkpoints.complete_steps(os.path.join(workdir, "checkpoints", "latest"))
        assert all(step < bad - 1 for step in kept)
        message = str(stopped.value)
        assert f"at step {bad}; stopping." in message and "Lower the learning rate" in message
        retry = tiny_config(epochs=1, every_steps=0)
        retry.optim.learning_rate = 0.01
        if kept:
            assert f"from step {kept[-1]}'s weights: --workdir NEW_DIR --config.restore_from=" \
                   f"{workdir}" in message
            retry.restore_from = workdir
        summary = experiment.train_and_evaluate(retry, str(tmp_path / "retry"))
        assert summary["steps"] == 3 and summary["test_loss"] < 100


def test_the_divergence_bound_is_a_hundred_uniform_guesses():
    ok = [{"loss": jax.numpy.float32(2.3)}] * 3
    metrics.check_diverged(ok, 3, 10)
    for value, shown in ((float("nan"), "nan"), (float("inf"), "inf"), (231.0, "231")):
        with pytest.raises(metrics.Diverged, match=f"became {shown} at step 4;"):
            metrics.check_diverged([*ok, {"loss": value}, *ok], 7, 10)
    metrics.check_diverged([{"loss": 230.0}], 1, 10)  # 100 * ln(10) = 230.26


def test_a_torn_last_line_of_the_metrics_is_dropped_with_a_warning(tmp_path, capsys):
    lines = [json.dumps({"step": step, "train_loss": 1.0}) for step in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "train_l')
    run_io.truncate_metrics(str(tmp_path), 2)
    assert (tmp_path / "metrics.jsonl").read_text() == "\n".join(lines[:2]) + "\n"
    assert "dropped line 4 of" in capsys.readouterr().err


def test_out_of_memory_is_one_line_with_the_batch_and_the_fix():
    config = tiny_config()
    error = RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 52052769408 bytes.")
    line = command_line.out_of_memory(error, config)
    assert line.startswith("Out of memory (48.5 GiB at once) on cpu with batch_size=32 and "
                           "eval_batch_size=40: lower them")


@pytest.mark.parametrize("text,line", [
    ("def get_config(:\n", r"--config \S+ could not be loaded \(line 1\): SyntaxError"),
    ("def get_config():\n    raise RuntimeError('boom')\n",
     r"--config \S+ could not be loaded: RuntimeError: boom"),
    (None, r"--config could not be loaded: \[Errno 2\] No such file or directory"),
])
def test_a_config_file_that_does_not_load_is_one_line_and_exit_2(tmp_path, text, line):
    path = tmp_path / "experiment.py"
    if text is not None:
        path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "alexnet_jax.main", "--config", str(path),
                             "--workdir", str(tmp_path / "run")], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert __import__("re").match(f"error: {line}", errors[0]), errors[0]
    assert not os.path.exists(tmp_path / "run")


def test_an_unknown_key_without_a_near_match_names_its_path_and_its_siblings():
    line = command_line.flag_message(AttributeError("\"'beta1'\""),
                              ["main", "--config", "x.py", "--config.optim.beta1=0.9"])
    assert line.startswith("--config.optim.beta1: the config has no key 'optim.beta1'; "
                           "config.optim has: decay_biases_and_norms, learning_rate, momentum")


def test_a_sweeps_trainers_die_with_it_even_by_sigkill(tmp_path):
    """A sweep killed with SIGKILL: its trainer, started as the sweep starts it, gets SIGTERM
    (on which a trainer saves and stops)."""
    marker = tmp_path / "ended"
    child = (f"from alexnet_jax import process; process.prepare(); import signal, time; "
             f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').close(), "
             f"exit(0))); open({str(marker)!r} + '.ready', 'w').close(); time.sleep(60)")
    parent = textwrap.dedent(f"""
        import subprocess, sys, time
        from alexnet_jax.sweep.launch import child_environment
        subprocess.Popen([sys.executable, "-c", {child!r}], env=child_environment())
        time.sleep(60)
    """)
    sweep = subprocess.Popen([sys.executable, "-c", parent], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": REPO})
    deadline = time.monotonic() + 60
    while not os.path.exists(f"{marker}.ready") and time.monotonic() < deadline:
        time.sleep(0.1)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    deadline = time.monotonic() + 20
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists()


def test_the_coordinator_listens_only_where_it_was_told(monkeypatch):
    """JAX's coordinator binds every interface unless told; the project tells it: the
    coordinator address itself, or --coordinator_bind_address."""
    from alexnet_jax import parallel
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(jax.config, "update", lambda *args: None)
    parallel.initialize_distributed("127.0.0.1:4321", 2, 0)
    parallel.initialize_distributed("10.0.0.5:4321", 2, 1, bind_address="10.0.0.5:4321")
    assert [c["coordinator_bind_address"] for c in calls] == ["127.0.0.1:4321", "10.0.0.5:4321"]
