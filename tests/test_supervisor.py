"""`serve --workers N`: the supervisor's bounded stop (`--stop-timeout`), and the container's grace
that must outlast it. The workers' port sharing and relaying are in tests/cluster/test_cluster.py."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import RunningBroker, free_port, wait_listening
from redis_helpers import running_redis
from test_metrics import Scrape

from cometd_broker import BrokerConfig
from cometd_broker.serving import SHUTDOWN_TIMEOUT
from cometd_broker.workers import STOP_TIMEOUT, Supervisor

ROOT = Path(__file__).resolve().parent.parent
DOCKER_STOP_GRACE = 10.0  # `docker stop`'s default -t: it SIGKILLs the container after this
MARGIN = 2.0  # what the README asks of a grace beyond the stop timeout

# A stand-in worker: says it is ready once its SIGTERM handling is in place, then sleeps.
FAKE_WORKER = """
import signal, sys, time
if sys.argv[1] == "hangs":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


def fake_worker(behaviour: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", FAKE_WORKER, behaviour], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    return process


def test_a_hung_worker_is_killed_once_the_stop_timeout_passes(capsys):
    supervisor = Supervisor(2, [], "", stop_timeout=1.0)
    supervisor.workers = {1: fake_worker("stops"), 2: fake_worker("hangs")}
    try:
        started = time.monotonic()
        assert supervisor._stop_all() == 1  # not a clean stop
        elapsed = time.monotonic() - started
        assert 1.0 <= elapsed < 3.0, elapsed
        assert supervisor.workers[1].returncode == -signal.SIGTERM
        assert supervisor.workers[2].returncode == -signal.SIGKILL
        pid = supervisor.workers[2].pid
        assert f"cometd-broker: worker 2 (pid {pid}) did not stop within 1 s of SIGTERM; killed it" \
            in capsys.readouterr().err
    finally:
        for process in supervisor.workers.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def test_workers_that_stop_are_not_waited_for(capsys):
    supervisor = Supervisor(2, [], "", stop_timeout=30.0)
    supervisor.workers = {1: fake_worker("stops"), 2: fake_worker("stops")}
    started = time.monotonic()
    assert supervisor._stop_all() == 0
    assert time.monotonic() - started < 5
    assert "killed" not in capsys.readouterr().err


def test_the_stop_timeout_is_an_option_with_a_checked_value():
    assert BrokerConfig().stop_timeout == STOP_TIMEOUT
    for value in (0, -1):
        with pytest.raises(ValueError, match="stop_timeout must be > 0"):
            BrokerConfig(stop_timeout=value).validate()


def test_the_container_grace_outlasts_the_stop_timeout():
    """docker stop SIGKILLs the whole container after its grace: the supervisor's own bounded wait
    (and its SIGKILL of a hung worker) must end first, and the documented graces must allow for it."""
    default = BrokerConfig().stop_timeout
    # A worker answers its held connects at once and gives in-flight requests SHUTDOWN_TIMEOUT; the
    # supervisor waits longer than that, and less than docker's default grace.
    assert SHUTDOWN_TIMEOUT < default <= DOCKER_STOP_GRACE - MARGIN

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^STOPSIGNAL SIGTERM$", dockerfile, re.M)
    assert re.search(r"grace \(`-t`, default (\d+) s\)", dockerfile)[1] == f"{DOCKER_STOP_GRACE:g}"
    assert re.search(r"COMETD_BROKER_STOP_TIMEOUT \(default (\d+) s\)", dockerfile)[1] == f"{default:g}"
    assert f"stop timeout + {MARGIN:g} s" in dockerfile

    readme = (ROOT / "README.md").read_text()
    row = re.search(r"^\| `--stop-timeout` \| `COMETD_BROKER_STOP_TIMEOUT` \| `([\d.]+)` \|", readme, re.M)
    assert row and float(row[1]) == default
    docker = readme[readme.index("\n## Docker\n"):readme.index("\n## Metrics and health\n")]
    assert f"`--stop-timeout` (`COMETD_BROKER_STOP_TIMEOUT`, default {default:g} s)" in docker
    assert f"at least the stop timeout + {MARGIN:g} s" in docker
    assert re.search(r"`-t`, default (\d+) s", docker)[1] == f"{DOCKER_STOP_GRACE:g}"
    graces = [float(g) for g in re.findall(r"docker stop -t (\d+)", docker)]
    graces += [float(g) for g in re.findall(r"stop_grace_period: (\d+)s", docker)]
    graces += [float(g) for g in re.findall(r"terminationGracePeriodSeconds: (\d+)", docker)]
    assert len(graces) == 3 and all(grace >= default + MARGIN for grace in graces), graces
    # The example that raises the stop timeout raises the grace with it.
    for grace, timeout in re.findall(r"--stop-timeout (\d+) -e COMETD_BROKER_STOP_TIMEOUT=(\d+)", docker):
        assert float(grace) >= float(timeout) + MARGIN


async def test_the_supervisor_stops_in_time_when_a_worker_hangs(tmp_path):
    """Real workers: each has its own process families on the shared /metrics page; one is frozen
    (SIGSTOP: it cannot even see SIGTERM), and the supervisor kills it after --stop-timeout, lets the
    other stop cleanly, and exits 1 well inside docker's grace."""
    with running_redis() as redis_server:
        port = free_port()
        with open(tmp_path / "workers.log", "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "cometd_broker", "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--workers", "2", "--redis", redis_server.url, "--allow-anonymous", "--stop-timeout", "1.5"],
                env={**os.environ, "COMETD_BROKER_EVENT_LOG": redis_server.url}, stdout=log_file,
                stderr=subprocess.STDOUT)
        running = RunningBroker(f"http://127.0.0.1:{port}/cometd", port, process, str(tmp_path / "workers.log"))
        frozen = None
        try:
            await asyncio.to_thread(wait_listening, running, 20)
            async with asyncio.timeout(20):
                while "listening on" not in running.log():
                    await asyncio.sleep(0.05)
            pids = {int(index): int(pid) for index, pid in
                    re.findall(r"worker (\d) started \(pid (\d+)\)", running.log())}
            assert sorted(pids) == [1, 2], running.log()

            page = await _scrape_both_workers(port)
            for index in ("1", "2"):
                assert page.value("process_resident_memory_bytes", worker=index) > 0
                assert page.value("process_open_fds", worker=index) >= 3
                assert time.time() - 60 < page.value("process_start_time_seconds", worker=index) <= time.time()
                assert page.value("process_cpu_seconds_total", worker=index) > 0

            frozen = pids[1]
            os.kill(frozen, signal.SIGSTOP)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            status = await asyncio.to_thread(process.wait, 15)
            elapsed = time.monotonic() - started
            log = running.log()
            assert status == 1, log
            assert 1.5 <= elapsed < DOCKER_STOP_GRACE - MARGIN, (elapsed, log)
            assert "cometd-broker: stopping 2 workers on SIGTERM (at most 1.5 s)" in log, log
            assert f"cometd-broker: worker 1 (pid {frozen}) did not stop within 1.5 s of SIGTERM; killed it" \
                in log, log
            assert re.search(r"worker 2: stopped in \d+\.\d\d s", log), log
            assert "(a worker did not stop cleanly)" in log, log
            frozen = None
        finally:
            if frozen is not None:
                os.kill(frozen, signal.SIGKILL)
            running.stop()


async def _scrape_both_workers(port: int) -> Scrape:
    """A /metrics page with both workers' samples (a sibling writes its page every 2 s)."""
    async with asyncio.timeout(15):
        while True:
            async with aiohttp.ClientSession() as http, \
                    http.get(f"http://127.0.0.1:{port}/metrics") as response:
                page = Scrape(await response.text())  # well formed: each family once
            if all(page.has("process_cpu_seconds_total", worker=index) for index in ("1", "2")):
                return page
            await asyncio.sleep(0.2)
