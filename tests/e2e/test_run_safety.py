"""Nothing silently wrong: one writer per workdir, a resumed run's identity records its changes,
a diverged run keeps no unsound checkpoint and says how to go on, run files survive a
crash mid-write, a sweep's trainers die with it."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import pytest

tfds = pytest.importorskip("tensorflow_datasets")


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))




















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




def test_a_sweeps_trainers_die_with_it_even_by_sigkill(tmp_path):
    """A sweep killed with SIGKILL: its trainer, started as the sweep starts it, gets SIGTERM
    (on which a trainer saves and stops)."""
    marker = tmp_path / "ended"
    child = (f"from alexnet_jax import prepare_process; prepare_process(); import signal, time; "
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
    from alexnet_jax.runtime import distributed
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(jax.config, "update", lambda *args: None)
    distributed.initialize_distributed("127.0.0.1:4321", 2, 0)
    distributed.initialize_distributed("10.0.0.5:4321", 2, 1, bind_address="10.0.0.5:4321")
    assert [c["coordinator_bind_address"] for c in calls] == ["127.0.0.1:4321", "10.0.0.5:4321"]
