"""Stop signals: SIGINT and SIGTERM noted wherever the main thread is, and the deadline."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alexnet_jax.runtime import signals

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_sigint_and_sigterm_both_request_a_stop():
    before = signal.getsignal(signal.SIGINT)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with signals.StopSignals() as stop:
            os.kill(os.getpid(), sig)
            assert stop.received == sig
            assert stop.stop_here(7)  # one process: at once
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_a_signal_is_noted_while_the_main_thread_is_busy_outside_python():
    """The main thread in one long NumPy product (no Python bytecode runs, so Python's own
    handler waits for it to return): the watching thread notes the signal meanwhile."""
    a = np.ones((5000, 5000), np.float64)
    with signals.StopSignals() as stop:
        noted = []
        threading.Timer(0.05, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
        threading.Timer(0.4, lambda: noted.append(stop.received)).start()
        started = time.monotonic()
        a @ a  # one call into BLAS
        assert time.monotonic() - started > 0.6, "the product was too quick to test this"
        assert noted == [signal.SIGTERM]


def test_a_process_that_cannot_reach_a_safe_point_still_ends_at_the_deadline(tmp_path):
    """Stuck (here: asleep where a collective would block it), a stopped process ends
    ``deadline_s`` after the signal, with one line and the status a stop gives."""
    (tmp_path / "checkpoints" / "latest" / "12").mkdir(parents=True)
    script = ("import os, signal, time\n"
              "from alexnet_jax.runtime import signals\n"
              "with signals.StopSignals(deadline_s=2, "
              f"checkpoints_dir={str(tmp_path / 'checkpoints')!r}):\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    time.sleep(60)\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": REPO})
    assert time.monotonic() - started < 30
    assert result.returncode == 143
    assert result.stderr.splitlines()[-1] == (
        "error: Stopped by SIGTERM, but this process could not reach a step where every process "
        "saves within 2 s (waiting on another process, in a collective or a checkpoint's "
        "barrier); exiting without a new checkpoint. Restart every process with the same "
        f"command to resume from step 12 (its checkpoint is in {tmp_path}/checkpoints/latest).")
