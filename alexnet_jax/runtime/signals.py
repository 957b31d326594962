"""Stopping on a signal: SIGTERM and SIGINT as a request to stop at a step every process
agrees on, with a deadline for a process that cannot get there (``StopSignals``)."""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import jax

from alexnet_jax.runtime import supervisor


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT arrived; the latest checkpoint is complete and the run resumes."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @classmethod
    def at(cls, step: int, signum: int, checkpoints_dir: str) -> TrainingInterrupted:
        """The stop at ``step``, whose checkpoint is in ``checkpoints_dir``."""
        return cls(f"Stopped by {signal_name(signum)} at step {step}; its checkpoint is in "
                   f"{checkpoints_dir}. Run the same command again to resume.", signum)


STOP_DEADLINE_S = 60.0
_STOP_KEY = "alexnet_jax/stop"


class StopSignals:
    """SIGTERM and SIGINT as a request to stop at a safe point: after a step (with its
    checkpoint), between evaluation batches, or between the steps of start-up.

    In a multi-process run every process must stop after the same step, or the one that
    stops first leaves the others waiting in a collective.  The first process to get a
    signal publishes it in ``jax.distributed``'s key-value store, where a thread of every
    process waits for it; the thread that learns of the stop publishes the steps its
    process has committed to (``claimed``), and every process trains on to the largest
    (``stop_step``) before saving it and stopping.  These threads answer while the main
    thread is busy, so a process blocked on a peer still publishes its step.  Evaluations
    run to their end there (their batches are collectives too).

    A process that cannot reach that step (a peer stopped or lost mid-collective, or stuck
    at a checkpoint's barrier) still ends: ``deadline_s`` after the request a watchdog
    thread prints one line naming the last complete checkpoint and exits with 128 + the
    signal.  The signal itself reaches that thread through ``signal.set_wakeup_fd``, which
    works while the main thread is blocked in XLA or orbax.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, deadline_s: float = STOP_DEADLINE_S, checkpoints_dir: str = ""):
        self.deadline_s, self.checkpoints_dir = deadline_s, checkpoints_dir
        self.received: int | None = None
        self.claimed = 0  # steps this process has dispatched or is about to
        self.stop_step: int | None = None
        self._lock = threading.Lock()
        self._previous: dict[int, Any] = {}
        self._watchdog: threading.Timer | None = None
        self._wakeup: tuple[int, int] | None = None
        self._previous_fd = -1
        self._client = _distributed_client()
        self._closed = threading.Event()
        self._listener: threading.Thread | None = None

    @property
    def multi_process(self) -> bool:
        return self._client is not None and jax.process_count() > 1

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:  # noted at once where the main thread is free ...
                self._previous[sig] = signal.signal(
                    sig, lambda signum, frame: self.request(signum, local=True))
            read, write = os.pipe()
            os.set_blocking(write, False)
            self._wakeup = (read, write)
            # ... and by a thread where it is blocked (in XLA, in orbax, at a barrier).
            self._previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
            threading.Thread(target=self._watch, daemon=True, name="stop-signals").start()
        if self.multi_process:
            self._listener = threading.Thread(target=self._listen, daemon=True,
                                              name="stop-listener")
            self._listener.start()
        return self

    def __exit__(self, *exc):
        self._closed.set()
        if self._listener is not None:
            self._listener.join()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_fd)
            os.close(self._wakeup[1])  # ends the watching thread
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _watch(self) -> None:
        read = self._wakeup[0]
        while chunk := os.read(read, 64):
            for signum in chunk:
                if signum in self.SIGNALS:
                    self.request(signum, local=True)
        os.close(read)

    def _listen(self) -> None:
        """Waits for another process's stop, a second at a time until this run ends (a
        thread still blocked in the client when Python exits would abort the process)."""
        while self.received is None and not self._closed.is_set():
            try:
                value = self._client.blocking_key_value_get(_STOP_KEY, 1000)
            except Exception:  # not yet (a timeout), or the service is gone
                continue
            self.request(int(value), local=False)

    def request(self, signum: int, local: bool) -> None:
        """Notes a stop (idempotent), tells the other processes, arms the deadline."""
        with self._lock:
            if self.received is not None:
                return
            self.received = signum
            claimed = self.claimed
        if self.multi_process:
            if local:
                try:
                    self._client.key_value_set(_STOP_KEY, str(signum))
                except Exception:  # another process published first
                    pass
            self._client.key_value_set(f"{_STOP_KEY}/claim/{jax.process_index()}", str(claimed))
        with self._lock:
            if self._watchdog is None:
                self._watchdog = threading.Timer(self.deadline_s, self._expire)
                self._watchdog.daemon = True
                self._watchdog.start()

    def _expire(self) -> None:
        name = signal_name(self.received)
        where = supervisor.resume_point(self.checkpoints_dir)
        print(f"error: Stopped by {name}, but this process could not reach a step where every "
              f"process saves within {self.deadline_s:.0f} s (waiting on another process, in "
              f"a collective or a checkpoint's barrier); exiting without a new checkpoint. "
              f"Restart every process with the same command to resume from {where}.",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(128 + self.received)

    def stop_here(self, step: int) -> bool:
        """Called after ``step`` steps, before the next: True where the run must stop now
        (with a checkpoint of ``step``); else the next step is claimed."""
        with self._lock:
            if self.received is None:
                self.claimed = step + 1
                return False
        if not self.multi_process:
            return True
        if self.stop_step is None:
            self.stop_step = max(
                int(self._client.blocking_key_value_get(f"{_STOP_KEY}/claim/{p}", 3_600_000))
                for p in range(jax.process_count()))
        if step >= self.stop_step:
            return True
        self.claimed = step + 1
        return False

    def interrupts_evaluation(self) -> bool:
        """Whether an evaluation should be abandoned now (one process alone may)."""
        return self.received is not None and not self.multi_process

    def check(self, where: str) -> None:
        """Raises ``TrainingInterrupted`` if a signal arrived (before any checkpoint)."""
        if self.received is not None:
            raise TrainingInterrupted(f"Stopped by {signal_name(self.received)} "
                                      f"{where}.", self.received)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _distributed_client() -> Any:
    from jax._src import distributed
    return distributed.global_state.client
