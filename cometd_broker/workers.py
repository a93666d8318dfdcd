"""`serve --workers N`: N broker processes on one port, supervised by the command's own process.

Each worker is `cometd-broker serve` again with `--workers 1` and a hidden `--worker-of`, which
makes it bind with SO_REUSEPORT (the kernel spreads new connections over the workers) and report
readiness on a pipe instead of printing "listening". The supervisor prints that line once, when
every worker is ready; forwards SIGTERM/SIGINT to the workers and waits for them, at most
`--stop-timeout` seconds, then SIGKILLs the ones still running; and
restarts a worker that dies, unless workers keep dying (then it stops them all and fails). It also
makes the directory in which the workers share their /metrics pages (worker_metrics.py) and removes it.

Sessions live in one process; a long-poll reaching another worker is relayed to the owner (cluster/routing.py),
and a client whose owner died gets 402 and re-handshakes where it is, resuming by replay from the
shared Redis log: that is why N > 1 needs --redis.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

READY = b"ready\n"
STARTUP_TIMEOUT = 30.0  # seconds every worker has to start listening
# Seconds workers have to stop after SIGTERM before they are killed (`--stop-timeout`). Below the 10 s
# `docker stop` waits by default before it SIGKILLs the whole container (Kubernetes waits 30 s): the
# supervisor must end its own bounded wait, kill a hung worker and exit first, or the other workers'
# clean stop is lost in the container's kill. Above the 5 s a worker gives its in-flight requests
# (serving.SHUTDOWN_TIMEOUT); held connects are answered at once, so a healthy worker stops well within.
STOP_TIMEOUT = 8.0
MAX_RESTARTS = 5  # worker deaths tolerated per RESTART_WINDOW before the supervisor gives up
RESTART_WINDOW = 60.0
POLL = 0.2  # seconds between checks of the workers


class Supervisor:
    def __init__(self, count: int, argv: Sequence[str], listening: str, stop_timeout: float = STOP_TIMEOUT) -> None:
        self.count = count
        self.stop_timeout = stop_timeout
        self.argv = list(argv)  # the `serve ...` arguments, as given
        self.listening = listening  # printed once every worker listens
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = False
        self._signal = ""  # the signal that stopped us, for the log
        self._deaths: list[float] = []
        self.metrics_dir = ""

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.metrics_dir = tempfile.mkdtemp(prefix="cometd-broker-metrics-")  # mode 0700: ours alone
        try:
            pipes = {index: self._spawn(index) for index in range(1, self.count + 1)}
            if not self._await_ready(pipes):
                self._stop_all()
                return 1
            print(self.listening, flush=True)
            return self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True
        self._signal = self._signal or signal.Signals(signum).name

    def _spawn(self, index: int) -> int:
        """Start worker `index`; return the read end of its readiness pipe."""
        read_fd, write_fd = os.pipe()
        command = [sys.executable, "-m", "cometd_broker", *self.argv, "--workers", "1",
                   "--worker-of", f"{os.getpid()}:{index}:{write_fd}", "--worker-metrics-dir", self.metrics_dir]
        try:
            process = subprocess.Popen(command, pass_fds=(write_fd,), preexec_fn=_die_with_parent)
        finally:
            os.close(write_fd)
        self.workers[index] = process
        print(f"cometd-broker: worker {index} started (pid {process.pid})", file=sys.stderr, flush=True)
        return read_fd

    def _await_ready(self, pipes: dict[int, int]) -> bool:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        waiting = dict(pipes)
        try:
            while waiting and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    print(f"cometd-broker: workers {sorted(waiting)} did not start within {STARTUP_TIMEOUT:.0f} s",
                          file=sys.stderr, flush=True)
                    return False
                readable, _, _ = select.select(list(waiting.values()), [], [], min(left, POLL))
                for index, fd in list(waiting.items()):
                    if fd in readable:
                        if os.read(fd, len(READY)) != READY:  # EOF: the worker exited before listening
                            print(f"cometd-broker: worker {index} failed to start "
                                  f"(exit status {self.workers[index].wait()})", file=sys.stderr, flush=True)
                            return False
                        os.close(fd)
                        del waiting[index]
            return not self._stopping
        finally:
            for fd in waiting.values():
                os.close(fd)

    def _supervise(self) -> int:
        while not self._stopping:
            time.sleep(POLL)
            for index, process in list(self.workers.items()):
                status = process.poll()
                if status is None or self._stopping:
                    continue
                now = time.monotonic()
                self._deaths = [t for t in self._deaths if now - t < RESTART_WINDOW] + [now]
                if len(self._deaths) > MAX_RESTARTS:
                    print(f"cometd-broker: workers died {len(self._deaths)} times in {RESTART_WINDOW:.0f} s; "
                          "stopping", file=sys.stderr, flush=True)
                    self._stop_all()
                    return 1
                print(f"cometd-broker: worker {index} (pid {process.pid}) exited with {status}; restarting",
                      file=sys.stderr, flush=True)
                os.close(self._spawn(index))  # its clients re-handshake on the others meanwhile
        started = time.monotonic()
        print(f"cometd-broker: stopping {len(self.workers)} workers on {self._signal} "
              f"(at most {self.stop_timeout:g} s)", file=sys.stderr, flush=True)
        status = self._stop_all()
        print(f"cometd-broker: stopped in {time.monotonic() - started:.2f} s"
              + ("" if status == 0 else " (a worker did not stop cleanly)"), file=sys.stderr, flush=True)
        return status

    def _stop_all(self) -> int:
        """SIGTERM every worker, wait at most `stop_timeout` seconds in all, SIGKILL the rest; 0 if all
        stopped cleanly."""
        for process in self.workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        clean = True
        for index, process in self.workers.items():
            try:
                status = process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                status = process.wait()
                print(f"cometd-broker: worker {index} (pid {process.pid}) did not stop within "
                      f"{self.stop_timeout:g} s of SIGTERM; killed it", file=sys.stderr, flush=True)
            clean = clean and status in (0, -signal.SIGTERM)
        return 0 if clean else 1


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM if the supervisor dies (even by SIGKILL), so none is orphaned."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: workers outlive a killed supervisor


def worker_index(worker_of: str) -> int:
    """In a worker: its index, 1..N (`worker_of` is "<pid>:<index>:<fd>")."""
    return int(worker_of.split(":")[1])


def report_ready(worker_of: str) -> None:
    """In a worker: tell the supervisor we listen (`worker_of` is "<pid>:<index>:<fd>")."""
    fd = int(worker_of.rsplit(":", 1)[1])
    try:
        os.write(fd, READY)
    finally:
        os.close(fd)
