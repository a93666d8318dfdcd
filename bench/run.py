"""Side-by-side benchmark: cometd-broker against CometD's Node.js server and Faye.

    python bench/run.py --quick     # CI-sized smoke run, < 2 minutes
    python bench/run.py             # the issue's sizes, < 15 minutes on 2 cores

Installs the peer servers from bench/peers/package-lock.json (`npm ci`, into the ignored
bench/peers/node_modules), then for every scenario starts each server in turn on a fresh
loopback port, pinned to core 0 (`taskset -c 0`), and drives it with bench/loadgen.py pinned
to core 1. Prints a table per scenario with ratios against the best peer and writes
bench/results/latest.json and bench/results/latest.md (or --out PREFIX).

The long-polling scenarios also run bench/floor_server.py ("floor", unless --no-floor): a bare
Bayeux-shaped server on uvloop + httptools + orjson. Every server's CPU-seconds per 100k
deliveries is also read at one common step (the offered delivery rate nearest --cpu-at that
every server passed), and each is given as a ratio to the floor's at that step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / "peers"
RESULTS = HERE / "results"
PY = sys.executable
SERVER_CORE, LOADGEN_CORE = "0", "1"
OURS, COMETD, FAYE = "cometd-broker", "cometd-nodejs-server", "faye"
# The same broker with the CLI's default event log, a SQLite file (ours runs with `--event-log memory:`):
# the durable default measured beside the in-memory log, in the same run. Not a peer.
OURS_SQLITE = "cometd-broker-sqlite"
FLOOR = "floor"  # bench/floor_server.py: long-polling only, a measuring stick rather than a peer
CPU_AT = 9000.0  # deliveries/s offered at the step whose CPU per 100k deliveries every server is compared at
MEDIA_TOKEN = "bench-media-token"
# Midpoints measured between a server's highest passed and lowest failed rate (loadgen.py --refine):
# a grid step of 4,000 becomes 500, so "msg/s vs memory" is not read off the grid.
REFINE = 3

# name: (clients, rates stepped through, step seconds) per size
SIZES: dict[str, dict[str, Any]] = {
    "quick": {
        "fanout": (100, "20,100,400", 2.0), "p2p": (100, "200,1000,3000,9000", 2.0),
        "idle": {"ws": 500, "lp": 300}, "agents": {"agents": 40, "rounds": 3},
        "redis": {"p2p": (100, (500,), 2.0), "fanout": (100, (50,), 2.0), "rounds": 1},
    },
    "full": {
        "fanout": (1000, "1,2,5,10,20,40,80,120,160,240", 4.0),
        # Steps of a third or less from 8,000 on, where the servers saturate: a 0.8x target cannot be
        # read off a grid that doubles (8,000 then 16,000 made every ratio 0.5 or 1.0).
        "p2p": (1000, "250,500,1000,2000,4000,8000,12000,16000,20000,24000,28000,32000,40000,48000,64000,80000,96000,"
                "112000,128000", 4.0),
        "idle": {"ws": 10000, "lp": 5000}, "agents": {"agents": 1000, "rounds": 5},
        # (clients, fixed offered msg/s, each measured on its own, seconds per step): a light, a busier and
        # a heavy point-to-point load (a long-poll batch of publishes, and so a Redis round trip, carries
        # the publishes of 10 ms: about 10, 40 and 80 of them; one process is about half busy at the heavy
        # one, and `--workers 2` with shared connections, which relays requests between workers, saturates)
        # Rounds: every configuration runs once per round, in turn, and each round's ratios compare runs a
        # minute apart at most: the machine's speed drifts by more than the effect between distant runs.
        "redis": {"p2p": (1000, (1000, 4000, 8000), 4.0), "fanout": (1000, (20,), 4.0), "rounds": 3},
    },
}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def have_taskset() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(core: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", core, *argv] if have_taskset() else argv


# --------------------------------------------------------------------------- peers

def install_peers() -> str | None:
    """`npm ci` the peers when needed; None when ready, else why they cannot run."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not found"
    stamp = PEERS / "node_modules" / ".package-lock.json"
    lock = PEERS / "package-lock.json"
    if stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return None
    log("installing peer servers: npm ci in bench/peers ...")
    done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PEERS,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return f"npm ci failed: {done.stderr.strip()[-500:]}"
    return None


# --------------------------------------------------------------------------- servers

class Server:
    def __init__(self, name: str, argv: list[str], port: int, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}/cometd"
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(pinned(SERVER_CORE, argv), cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        self.pid = self.proc.pid  # taskset execs the server, so this is the server's pid
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{name} exited at start: {Path(self.log.name).read_text()[-2000:]}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        return
                except OSError:
                    time.sleep(0.1)
            raise RuntimeError(f"{name} did not listen on {port} within 30 s")
        except BaseException:  # also SIGTERM / Ctrl-C meanwhile: nobody else holds this server to stop it
            self.stop()
            raise

    def stop(self) -> None:
        self._stop()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    scratch: str | None = None  # a directory of the server's own (the SQLite event log's), removed at stop

    def _stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()
        os.unlink(self.log.name)


def start(name: str, *, websocket: bool, users_file: Path | None = None) -> Server:
    port = free_port()
    if name in (OURS, OURS_SQLITE):
        scratch = tempfile.mkdtemp(prefix="bench-sqlite-") if name == OURS_SQLITE else None
        event_log = f"sqlite:///{scratch}/events.db" if scratch else "memory:"
        # The durable configuration is the CLI's default: the contact center's state in a file too.
        state_db = f"{scratch}/state.db" if scratch else ":memory:"
        argv = [PY, "-m", "cometd_broker", "serve", "--host", "127.0.0.1", "--port", str(port), "--allow-anonymous",
                "--event-log", event_log, "--state-db", state_db, "--log-level", "WARNING",
                "--transports", "websocket,long-polling" if websocket else "long-polling"]
        if users_file is not None:
            argv += ["--users-file", str(users_file), "--media-token", MEDIA_TOKEN]
        try:
            server = Server(name, argv, port, ROOT)
        except BaseException:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
            raise
        server.scratch = scratch
        return server
    if name == FLOOR:
        return Server(name, [PY, str(HERE / "floor_server.py"), str(port)], port, ROOT)
    script = "cometd_server.js" if name == COMETD else "faye_server.js"
    return Server(name, ["node", script, str(port)], port, PEERS)


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    return found if Path(found).exists() else None


def run_loadgen(server: Server, args: list[str], timeout: float, profile: Path | None = None) -> dict[str, Any]:
    argv = pinned(LOADGEN_CORE, [PY, str(HERE / "loadgen.py"), "--url", server.url, "--server-pid", str(server.pid),
                                 "--deadline", str(timeout), *args])
    spy = None
    if profile is not None and py_spy():
        spy = subprocess.Popen(pinned(LOADGEN_CORE, [py_spy(), "record", "--pid", str(server.pid), "--rate", "200",
                                                     "--format", "raw", "-o", str(profile), "--nonblocking"]),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout + 30, cwd=ROOT)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=20)
            except subprocess.TimeoutExpired:
                spy.kill()
    if done.returncode != 0 or not done.stdout.strip():
        return {"error": f"loadgen exited {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- scenarios

def make_users(path: Path, count: int) -> None:
    """A users file of `count` agents. Hashed with few PBKDF2 iterations: the bench measures
    notifications, not 1,000 logins of 200k-iteration hashing (which the default would cost)."""
    sys.path.insert(0, str(ROOT))
    from channels.auth import User, UserDirectory, hash_password

    directory = UserDirectory(User(f"agent{i}", hash_password(f"pw-{i}", iterations=1000), frozenset({"agent"}),
                                   f"Agent{i}", "Bench", str(101 + i)) for i in range(count))
    directory.save(path)


def throughput(name: str, scenario: str, transport: str, size: dict[str, Any], profile_dir: Path | None,
               ) -> dict[str, Any]:
    clients, rates, step = size[scenario]
    server = start(name, websocket=transport == "websocket")
    suffix = "-sqlite" if name == OURS_SQLITE else ""
    profile = (profile_dir / f"{scenario}-{transport}{suffix}.txt" if profile_dir and name in (OURS, OURS_SQLITE)
               else None)
    try:
        return run_loadgen(server, ["--scenario", scenario, "--transport", transport, "--clients", str(clients),
                                    "--rates", rates, "--step-seconds", str(step), "--refine", str(REFINE),
                                    "--concurrency", "100"], timeout=360, profile=profile)
    finally:
        server.stop()


def idle(name: str, size: dict[str, Any]) -> dict[str, Any]:
    server = start(name, websocket=name != COMETD)
    try:
        ws = size["idle"]["ws"] if name != COMETD else 0
        return run_loadgen(server, ["--scenario", "idle", "--ws-sessions", str(ws), "--lp-sessions",
                                    str(size["idle"]["lp"]), "--concurrency", "200"], timeout=240)
    finally:
        server.stop()


def agents(name: str, size: dict[str, Any], profile_dir: Path | None) -> dict[str, Any]:
    count = size["agents"]["agents"]
    with tempfile.TemporaryDirectory(prefix="bench-users-") as tmp:
        users = Path(tmp) / "users.json"
        make_users(users, count)
        server = start(name, websocket=False, users_file=users)
        profile = profile_dir / f"agents{'-sqlite' if name == OURS_SQLITE else ''}.txt" if profile_dir else None
        try:
            # Profiled in the measured phase only: the logins' password hashing is not what it measures.
            spy = ["--profile-measured", str(profile)] if profile is not None and py_spy() else []
            return run_loadgen(server, ["--scenario", "agents", "--clients", str(count), "--rounds",
                                        str(size["agents"]["rounds"]), "--media-token", MEDIA_TOKEN,
                                        "--concurrency", "100", "--drain-seconds", "10", *spy], timeout=240)
        finally:
            server.stop()


# --------------------------------------------------------------------------- redis: messages per server CPU-second

REDIS_CONFIGS = ("single", "single-sqlite", "redis-1", "redis-2")
REDIS_WORKLOADS = (("p2p-lp", "p2p", "long-polling"), ("fanout-ws", "fanout", "websocket"))
# How the load generator's long-polling sessions use connections: "shared" is its usual pool (a
# session's requests may travel on any idle keep-alive connection, so behind `--workers 2` on either
# worker); "affinity" keeps each session on connections that reach its worker (--sticky-connections).
CLIENT_MODES = ("shared", "affinity")
# What each round runs: one process does the same work whatever the client mode, so only `--workers 2`
# is measured both ways; the others are the affinity baselines every redis row is compared with.
REDIS_CASES = (("affinity", "single"), ("affinity", "single-sqlite"), ("affinity", "redis-1"),
               ("affinity", "redis-2"), ("shared", "redis-2"))
REDIS_TARGET = 0.8
VIA_TEXT = {"unix": "through its Unix socket (`--redis unix:///...`, as brokers on Redis's host would)",
            "tcp": "over loopback TCP (`--redis redis://127.0.0.1:PORT/0`)"}


class RedisServer:
    """A private redis-server on a free loopback port and a Unix socket, pinned with the servers; stopped
    by its pid. The brokers reach it through the socket (`via="unix"`, as brokers on Redis's host would:
    cheaper than loopback TCP) or through the port (`via="tcp"`)."""

    def __init__(self, via: str = "unix") -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise RuntimeError("redis-server not found")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        socket_path = Path(self.dir) / "redis.sock"
        self.url = f"unix://{socket_path}?db=0" if via == "unix" else f"redis://127.0.0.1:{self.port}/0"
        self.log = open(Path(self.dir) / "redis.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(pinned(SERVER_CORE, [binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                                          "--unixsocket", str(socket_path), "--unixsocketperm", "700",
                                                          "--save", "", "--appendonly", "no", "--dir", self.dir]),
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid  # taskset execs redis-server
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start")
            try:
                if self.command("PING") == b"+PONG":
                    return
            except OSError:
                time.sleep(0.05)

    def command(self, *words: str) -> bytes:
        """One command in RESP; the first line of the reply."""
        wire = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(wire.encode())
            return sock.recv(4096).split(b"\r\n", 1)[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_config(config: str, redis: RedisServer, tmp: Path, websocket: bool) -> Server:
    """cometd-broker as `config` on a fresh port; returns once every worker listens."""
    port = free_port()
    argv = [PY, "-m", "cometd_broker", "serve", "--host", "127.0.0.1", "--port", str(port), "--allow-anonymous",
            "--state-db", ":memory:", "--log-level", "WARNING",
            "--transports", "websocket,long-polling" if websocket else "long-polling"]
    argv += {"single": ["--event-log", "memory:"],
             "single-sqlite": ["--event-log", f"sqlite:///{tmp / 'events.db'}"],
             "redis-1": ["--redis", redis.url],
             "redis-2": ["--redis", redis.url, "--workers", "2"]}[config]
    server = Server(OURS, argv, port, ROOT)
    deadline = time.monotonic() + 30  # the supervisor says "listening" once every worker does
    try:
        while "listening on" not in Path(server.log.name).read_text():
            if time.monotonic() > deadline or server.proc.poll() is not None:
                raise RuntimeError(f"{config} did not start: {Path(server.log.name).read_text()[-2000:]}")
            time.sleep(0.1)
    except BaseException:  # a failed start, or SIGTERM / Ctrl-C meanwhile: nobody else will stop it
        server.stop()
        raise
    return server


def scrape_workers(port: int, workers: int) -> dict[str, dict[str, float]]:
    """Counters of each broker process from /metrics, keyed by worker index ("1" alone). One scrape
    answers for every worker (samples labelled worker="<index>"), a worker's sibling's figures as of
    its last share, at most 2 s ago: so with workers it waits that long first."""
    import urllib.request

    wanted = ("cometd_start_time_seconds", "cometd_unknown_session_total", 'cometd_handshakes_total{result="accepted"}',
              "cometd_published_total", "cometd_subscriptions")
    if workers > 1:
        time.sleep(2.5)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    seen: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        worker = "1"
        labelled = re.fullmatch(r'(\w+)\{worker="(\d+)",?(.*)\}', name)
        if labelled:
            worker, rest = labelled[2], labelled[3]
            name = labelled[1] + (f"{{{rest}}}" if rest else "")
        values = seen.setdefault(worker, {})
        if name in wanted:
            values[name.split("{")[0]] = float(value)
        elif name.startswith("cometd_sessions{"):
            values["cometd_sessions"] = values.get("cometd_sessions", 0.0) + float(value)
    return seen


def redis_run(config: str, scenario: str, transport: str, mode: str, rate: int, size: dict[str, Any],
              redis: RedisServer) -> dict[str, Any]:
    clients, _, step = size["redis"][scenario]
    redis.command("FLUSHALL")  # every configuration starts from an empty Redis
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as tmp:
        server = start_config(config, redis, Path(tmp), websocket=transport == "websocket")
        try:
            workers = [int(p) for p in re.findall(r"worker \d+ started \(pid (\d+)\)",
                                                  Path(server.log.name).read_text())]
            args = ["--scenario", scenario, "--transport", transport, "--clients", str(clients),
                    "--rates", f"{rate},{rate}", "--step-seconds", str(step), "--concurrency", "100",
                    "--keep-going"]  # step 1 warms up, step 2 is measured
            if config.startswith("redis"):
                args += ["--extra-pids", str(redis.pid)]
            if mode == "affinity":
                args.append("--sticky-connections")
            result = run_loadgen(server, args, timeout=240)
            result["server_pid"], result["worker_pids"], result["redis_pid"] = server.pid, workers, redis.pid
            result["broker_metrics"] = scrape_workers(server.port, max(1, len(workers)))
            return result
        finally:
            server.stop()


def summarize_redis(rounds: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (client mode, configuration): the round whose ratio to `single` is the median,
    with the range over the rounds (each round's runs compared with that round's baselines)."""
    per_round = [_redis_rows(runs) for runs in rounds]
    rows = []
    for index, first in enumerate(per_round[0]):
        candidates = [r[index] for r in per_round if "error" not in r[index]]
        if not candidates:
            rows.append(first)
            continue
        key = "vs_single_total" if first.get("config") != "single" else "msg_per_total_cpu_s"
        ranked = sorted(candidates, key=lambda row: row.get(key) or 0)
        row = dict(ranked[len(ranked) // 2])
        if len(candidates) > 1 and first.get("config") != "single":
            values = [c.get("vs_single_total") for c in candidates if c.get("vs_single_total") is not None]
            row["total_ratio_range"] = f"{min(values)}-{max(values)}" if values else None
        row["rounds"] = len(candidates)
        rows.append(row)
    return rows


def _redis_rows(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run of one round, with its ratios to that round's `single` and `single-sqlite`."""
    rows = []
    for key, r in runs.items():
        mode, config = key.split("/")
        if "error" in r or not r.get("steps"):
            rows.append({"server": f"{config} ({mode})", "error": r.get("error", "no steps")})
            continue
        st = r["steps"][-1]
        broker_cpu = st["server_cpu_s"]
        redis_cpu = st.get("extra_cpu_s", 0.0) if config.startswith("redis") else 0.0
        delivered = st["received"]
        problems = [] if st["ok"] else [st["why"]]
        if st["publish_failures"] and not st["lost"]:
            problems.append(f"{st['publish_failures']} publish failures")
        row: dict[str, Any] = {
            "server": config, "mode": mode, "config": config, "offered_msg_s": st["rate"],
            "delivered": delivered, "expected": st["expected"], "lost": st["lost"],
            "publish_failures": st["publish_failures"], "rehandshakes": r.get("rehandshakes", 0),
            "misrouted": st.get("misrouted", 0), "p50_ms": st["p50_ms"], "p99_ms": st["p99_ms"],
            "broker_cpu_s": broker_cpu, "redis_cpu_s": redis_cpu if config.startswith("redis") else None,
            "msg_per_broker_cpu_s": round(delivered / broker_cpu) if broker_cpu else None,
            "msg_per_total_cpu_s": round(delivered / (broker_cpu + redis_cpu)) if broker_cpu else None,
            "other_cpu_pct": st.get("foreign_cpu_pct"), "problems": "; ".join(problems),
            "warmup_lost": r["steps"][0]["lost"] if len(r["steps"]) > 1 else None,
        }
        if r.get("worker_pids"):
            per = [st["procs_cpu_s"].get(str(pid), 0.0) for pid in r["worker_pids"]]
            row["worker_cpu_s"] = " / ".join(f"{c:.2f}" for c in per)
            if not all(c > 0 for c in per):
                row["problems"] = "; ".join(filter(None, [row["problems"], "a worker used no CPU"]))
        metrics = dict(sorted((r.get("broker_metrics") or {}).items()))  # by worker index
        if metrics:
            row["unknown_session_402s"] = " / ".join(str(int(m.get("cometd_unknown_session_total", 0)))
                                                     for m in metrics.values())
            row["handshakes"] = " / ".join(str(int(m.get("cometd_handshakes_total", 0))) for m in metrics.values())
            row["sessions"] = " / ".join(str(int(m.get("cometd_sessions", 0))) for m in metrics.values())
        rows.append(row)
    for row in rows:
        if "error" in row:
            continue
        for base in ("single", "single-sqlite"):
            ref = next((x for x in rows if x.get("config") == base and "error" not in x), None)
            suffix = "" if base == "single" else "_sqlite"
            if ref and ref["msg_per_broker_cpu_s"] and row["msg_per_broker_cpu_s"]:
                row[f"vs_single{suffix}_broker"] = round(row["msg_per_broker_cpu_s"] / ref["msg_per_broker_cpu_s"], 2)
                row[f"vs_single{suffix}_total"] = round(row["msg_per_total_cpu_s"] / ref["msg_per_total_cpu_s"], 2)
        if row["config"].startswith("redis"):
            ratio = row.get("vs_single_total")
            if ratio is None:
                row["target"] = "not measured"
            elif row["lost"] or row["publish_failures"]:
                row["target"] = f"no: {row['lost']} lost, {row['publish_failures']} publish failures"
            else:
                row["target"] = "yes" if ratio >= REDIS_TARGET else "no"
    return rows


REDIS_DELIVERY_COLUMNS = [
    ("config", "config"), ("mode", "client connections"), ("offered_msg_s", "offered msg/s"),
    ("delivered", "delivered"), ("lost", "lost"), ("warmup_lost", "lost in warm-up"),
    ("publish_failures", "publish failures"),
    ("rehandshakes", "rehandshakes"), ("misrouted", "misrouted conns"),
    ("unknown_session_402s", "402s per worker (broker)"), ("sessions", "sessions per worker at end"),
    ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("problems", "problems")]
REDIS_CPU_COLUMNS = [
    ("config", "config"), ("mode", "client connections"), ("broker_cpu_s", "broker CPU s"),
    ("worker_cpu_s", "per-worker CPU s"), ("redis_cpu_s", "redis CPU s"),
    ("msg_per_broker_cpu_s", "msgs / broker CPU-s"), ("msg_per_total_cpu_s", "msgs / (broker+redis) CPU-s"),
    ("vs_single_broker", "vs single (broker)"), ("vs_single_total", "vs single (broker+redis)"),
    ("vs_single_sqlite_broker", "vs single-sqlite (broker)"),
    ("vs_single_sqlite_total", "vs single-sqlite (broker+redis)"),
    ("total_ratio_range", "vs single (broker+redis), all rounds"), ("target", f">= {REDIS_TARGET}x target (median)"),
    ("other_cpu_pct", "other procs CPU %")]


def redis_scenario(size: dict[str, Any], via: str) -> tuple[dict[str, Any], list[str]]:
    """Every configuration at the same fixed offered rate; delivered messages per server CPU-second."""
    report: dict[str, Any] = {"configs": list(REDIS_CONFIGS), "modes": list(CLIENT_MODES),
                              "target": REDIS_TARGET, "redis_via": via, "workloads": {}}
    md = ["## Redis engine: delivered messages per server CPU-second", "",
          "cometd-broker alone, at fixed offered rates (a configuration the rate saturates shows it in `problems`: "
          "p99 over 250 ms), in four configurations on a fresh port each: `single` (`--event-log memory:`), "
          "`single-sqlite` (SQLite event log in a temp dir), `redis-1` (`--redis`: event log in Redis Streams), "
          "`redis-2` (`--workers 2 --redis`: two processes on one port via SO_REUSEPORT). A private redis-server "
          "(`--save '' --appendonly no`) is pinned with the broker to core 0 and flushed before each run; the "
          f"brokers reach it {VIA_TEXT[via]}. Two load-generator steps at the same rate: the first warms up, the "
          "second is measured. Broker CPU is the server process and all its descendants (the workers); redis CPU is "
          "redis-server's. The configurations run in turn, in rounds; each round's ratios compare msgs per "
          "CPU-second with that round's `single` / `single-sqlite` (runs a minute apart at most: this machine's "
          "speed drifts by more than the effect between distant runs). Each row is the round with the median ratio; "
          f"`all rounds` gives the range. The target is broker+redis >= {REDIS_TARGET}x `single` with nothing lost. "
          "Client connections: `shared` is the load generator's usual pool (a long-polling session's requests may "
          "travel on any idle keep-alive connection, hence behind `--workers 2` on either worker, which relays them "
          "to the session's owner); `affinity` (`--sticky-connections`) keeps each session, and the publisher's, on "
          "connections that reached its worker, as a load balancer with session affinity would (one process does "
          "the same work either way, so only `redis-2` runs both). `misrouted conns` counts new connections that "
          "reached the wrong worker (402) and were dropped. `402s per worker` and `sessions per worker` are each "
          "worker's `cometd_unknown_session_total` and `cometd_sessions` from /metrics after the run, by its "
          "`worker` label; `per-worker CPU s` is in the same order. Delivered, lost, latency and CPU are the "
          "measured step's; rehandshakes, misrouted connections and publish failures count the whole run (setup and "
          "both steps).", ""]
    try:
        redis = RedisServer(via)
    except (RuntimeError, OSError) as exc:
        report["error"] = str(exc)
        return report, [*md, f"error: {exc}", ""]
    try:
        for workload, scenario, transport in REDIS_WORKLOADS:
            clients, rates, step = size["redis"][scenario]
            for rate in rates:
                key = f"{workload}@{rate}"
                log(f"== redis/{key}: {clients} {transport} clients, {rate} msg/s, "
                    f"{step} s warm-up + {step} s measured")
                rounds: list[dict[str, dict[str, Any]]] = []
                for round_no in range(size["redis"]["rounds"]):
                    runs: dict[str, dict[str, Any]] = {}
                    for mode, config in REDIS_CASES:
                        log(f"-- round {round_no + 1}: {config} ({mode} connections)")
                        try:
                            runs[f"{mode}/{config}"] = redis_run(config, scenario, transport, mode, rate, size, redis)
                        except (RuntimeError, subprocess.TimeoutExpired) as exc:
                            runs[f"{mode}/{config}"] = {"error": str(exc)[:500]}
                    rounds.append(runs)
                rows = summarize_redis(rounds)
                report["workloads"][key] = {"scenario": scenario, "transport": transport, "clients": clients,
                                            "rate": rate, "step_seconds": step, "summary": rows, "rounds": rounds}
                text = table(rows, REDIS_DELIVERY_COLUMNS) + "\n\n" + table(rows, REDIS_CPU_COLUMNS)
                title = {"p2p": f"point-to-point, {clients} {transport} clients each on its own channel",
                         "fanout": f"fan-out, {clients} {transport} clients on one channel"}[scenario]
                md += [f"### {title}, {rate} msg/s offered", "", text, ""]
                log(text)
    finally:
        redis.stop()
    return report, md


# --------------------------------------------------------------------------- reporting

def reference_rate(runs: dict[str, dict[str, Any]], fanout: int, cpu_at: float) -> float | None:
    """The publish rate of the step at which every server's CPU per delivery is compared: of the
    rates every measured server passed (else, ran), the one offering deliveries/s nearest `cpu_at`
    on a log scale (the rates are stepped geometrically). None when no rate is common to all."""
    measured = [r["steps"] for r in runs.values() if "error" not in r and r.get("steps")]
    if not measured:
        return None
    for passed_only in (True, False):
        common = set.intersection(*({st["rate"] for st in steps if st["ok"] or not passed_only} for steps in measured))
        if common:
            return min(common, key=lambda rate: abs(math.log(rate * fanout / cpu_at)))
    return None


def summarize_throughput(runs: dict[str, dict[str, Any]], fanout: int = 1, cpu_at: float = CPU_AT,
                         ) -> list[dict[str, Any]]:
    """One row per server. `fanout` is the deliveries one publish makes (the subscribers of its channel)."""
    ref = reference_rate(runs, fanout, cpu_at)
    rows = []
    for name, r in runs.items():
        if "error" in r or not r.get("steps"):
            rows.append({"server": name, "error": r.get("error", "no steps")})
            continue
        best = r.get("best") or {}
        last = r["steps"][-1]
        rows.append({
            "server": name, "max_msg_s": best.get("delivered_per_s", 0.0),
            "at_publish_rate": best.get("rate"),
            "p50_ms": best.get("p50_ms"), "p99_ms": best.get("p99_ms"), "max_ms": best.get("max_ms"),
            "lost_total": sum(s["lost"] for s in r["steps"]),
            "cpu_s_per_100k": best.get("server_cpu_per_100k"), "server_cpu_pct": best.get("server_cpu_pct"),
            "peak_rss_mb": round(r["mem"]["hwm_kb"] / 1024, 1), "loadgen_cpu_pct": best.get("loadgen_cpu_pct"),
            "stopped_by": r.get("stopped_by", "" if last["ok"] else last["why"]),
            "other_cpu_pct": max((st.get("foreign_cpu_pct", 0) for st in r["steps"]), default=0),
        })
        at_ref = next((st for st in r["steps"] if st["rate"] == ref), None)
        if at_ref is not None:
            rows[-1]["ref_msg_s"] = round(ref * fanout)
            rows[-1]["ref_cpu_s_per_100k"] = at_ref["server_cpu_per_100k"]
    floor = next((x for x in rows if x["server"] == FLOOR and x.get("ref_cpu_s_per_100k")), None)
    for row in rows:
        if floor and row is not floor and row.get("ref_cpu_s_per_100k"):
            row["ratio_cpu_vs_floor"] = round(row["ref_cpu_s_per_100k"] / floor["ref_cpu_s_per_100k"], 2)
    peers = [x for x in rows if x["server"] not in (OURS, OURS_SQLITE, FLOOR) and "error" not in x]
    ours = next((x for x in rows if x["server"] == OURS and "error" not in x), None)
    durable = next((x for x in rows if x["server"] == OURS_SQLITE and "error" not in x), None)
    if ours and durable:  # the durable default against the in-memory log: the target is >= 0.8
        if ours["max_msg_s"]:
            durable["ratio_vs_memory"] = round(durable["max_msg_s"] / ours["max_msg_s"], 2)
        if ours.get("ref_cpu_s_per_100k") and durable.get("ref_cpu_s_per_100k"):
            durable["ref_cpu_vs_memory"] = round(durable["ref_cpu_s_per_100k"] / ours["ref_cpu_s_per_100k"], 2)
    for row in (x for x in (ours, durable) if x and peers):
        best_peer = max(peers, key=lambda x: x["max_msg_s"])
        row["ratio_msg_s"] = round(row["max_msg_s"] / best_peer["max_msg_s"], 2) if best_peer["max_msg_s"] else None
        cheapest = min((p for p in peers if p["cpu_s_per_100k"]), key=lambda x: x["cpu_s_per_100k"], default=None)
        if cheapest and row["cpu_s_per_100k"]:
            row["ratio_cpu_per_100k"] = round(row["cpu_s_per_100k"] / cheapest["cpu_s_per_100k"], 2)
        row["best_peer"] = best_peer["server"]
    return rows


def summarize_idle(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, r in runs.items():
        if "error" in r:
            rows.append({"server": name, "error": r["error"]})
            continue
        row = {"server": name, "peak_rss_mb": round(r["mem"]["hwm_kb"] / 1024, 1)}
        for kind, key in (("websocket", "ws"), ("long-polling", "lp")):
            k = r.get(kind)
            if k:
                row[f"{key}_sessions"] = k["sessions"]
                row[f"{key}_failures"] = k["failures"]
                row[f"{key}_kb_per_session"] = k["rss_per_session_kb"]
                row[f"{key}_handshakes_s"] = k["handshakes_per_s"]
        rows.append(row)
    ours = next((x for x in rows if x["server"] == OURS and "error" not in x), None)
    for key in ("ws", "lp"):
        peers = [x for x in rows if x["server"] != OURS and x.get(f"{key}_kb_per_session")]
        if ours and peers and ours.get(f"{key}_kb_per_session"):
            best = min(peers, key=lambda x: x[f"{key}_kb_per_session"])
            ours[f"{key}_rss_ratio"] = round(ours[f"{key}_kb_per_session"] / best[f"{key}_kb_per_session"], 2)
            fastest = max(peers, key=lambda x: x[f"{key}_handshakes_s"])
            ours[f"{key}_handshake_ratio"] = round(ours[f"{key}_handshakes_s"] / fastest[f"{key}_handshakes_s"], 2)
    return rows


THROUGHPUT_COLUMNS = [("server", "server"), ("max_msg_s", "max msg/s"), ("at_publish_rate", "publish/s"),
                      ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("max_ms", "max ms"), ("lost_total", "lost"),
                      ("cpu_s_per_100k", "CPU s/100k"), ("peak_rss_mb", "peak RSS MB"),
                      ("loadgen_cpu_pct", "loadgen CPU %"), ("other_cpu_pct", "other procs CPU % (max)"),
                      ("ratio_msg_s", "msg/s vs best peer"),
                      ("ratio_cpu_per_100k", "CPU/100k vs best peer"), ("ref_msg_s", "ref msg/s"),
                      ("ref_cpu_s_per_100k", "CPU s/100k at ref"), ("ratio_cpu_vs_floor", "CPU/100k at ref vs floor"),
                      ("ratio_vs_memory", "msg/s vs memory"), ("ref_cpu_vs_memory", "CPU/100k at ref vs memory"),
                      ("stopped_by", "stopped by")]
IDLE_COLUMNS = [("server", "server"), ("ws_sessions", "ws sessions"), ("ws_kb_per_session", "KiB/ws session"),
                ("ws_handshakes_s", "ws handshakes/s"), ("lp_sessions", "parked long-polls"),
                ("lp_kb_per_session", "KiB/long-poll session"), ("lp_handshakes_s", "lp handshakes/s"),
                ("peak_rss_mb", "peak RSS MB"), ("ws_rss_ratio", "ws RSS vs best peer"),
                ("lp_rss_ratio", "lp RSS vs best peer"), ("ws_handshake_ratio", "ws handshakes vs best peer"),
                ("lp_handshake_ratio", "lp handshakes vs best peer")]


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    cols = [(k, h) for k, h in columns if any(k in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['server']} | error: {r['error']} |")
            continue
        lines.append("| " + " | ".join("" if r.get(k) is None else str(r.get(k)) for k, _ in cols) + " |")
    return "\n".join(lines)


def summarize_agents(r: dict[str, Any], p2p_rows: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The agents run with what one core sustains (REST operations per server CPU-second) and, when p2p-lp
    ran in the same run, its CPU per 100k notifications over the broker's own per 100k point-to-point
    long-polling deliveries at p2p-lp's reference step (one message per poll, as a notification mostly is)."""
    if "error" in r:
        return r
    out = {**r}
    if r.get("server_cpu_s"):
        out["rest_ops_per_cpu_s"] = round(r["rest_ops"] / r["server_cpu_s"], 1)
    ours = next((row for row in p2p_rows or () if row.get("server") == OURS and row.get("ref_cpu_s_per_100k")), None)
    if ours is not None and r.get("server_cpu_per_100k"):
        out["p2p_ref_msg_s"] = ours["ref_msg_s"]
        out["p2p_ref_cpu_s_per_100k"] = ours["ref_cpu_s_per_100k"]
        out["ratio_cpu_vs_p2p"] = round(r["server_cpu_per_100k"] / ours["ref_cpu_s_per_100k"], 2)
    return out


def agents_table(results: dict[str, dict[str, Any]]) -> str:
    """One column per configuration; the point-to-point ratio is always against the memory broker's."""
    columns = [_agents_rows(r) for r in results.values()]
    names = list(results)
    keys = next((list(rows) for rows in columns if rows), [])
    lines = ["| measure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(str(rows.get(key, "")) for rows in columns) + " |")
    errors = [f"{name}: error: {r['error']}" for name, r in results.items() if "error" in r]
    return "\n".join(lines + errors)


def _agents_rows(r: dict[str, Any]) -> dict[str, Any]:
    if "error" in r:
        return {}
    rows = [("agents (accepted an SMS)", f"{r['agents']} ({r.get('accepted')})"),
            ("REST operations/s (media gateway + agent)", r["rest_ops_per_s"]),
            ("/v2/me notifications delivered/s", r["notifications_per_s"]),
            ("offer latency p50/p99/max ms", "/".join(str(r["offer_ms"][k]) for k in ("p50", "p99", "max"))),
            ("customer message -> agent p50/p99/max ms",
             "/".join(str(r["customer_msg_ms"][k]) for k in ("p50", "p99", "max"))),
            ("agent SendMessage -> own notification p50/p99/max ms",
             "/".join(str(r["agent_msg_ms"][k]) for k in ("p50", "p99", "max"))),
            ("messages lost", f"{r['lost']} of {r['messages_expected']}"),
            ("REST failures", r["rest_failures"]),
            ("server CPU s per 100k notifications", r["server_cpu_per_100k"])]
    if "ratio_cpu_vs_p2p" in r:
        rows.append(("  vs the memory broker's point-to-point CPU s per 100k deliveries (p2p-lp's reference "
                     "step, this run)", f"{r['ratio_cpu_vs_p2p']}x (of {r['p2p_ref_cpu_s_per_100k']} at "
                                        f"{r['p2p_ref_msg_s']} msg/s)"))
    if "rest_ops_per_cpu_s" in r:
        rows.append(("REST operations per server CPU-second (what one core sustains)", r["rest_ops_per_cpu_s"]))
    rows += [("server CPU %", r["server_cpu_pct"]), ("loadgen CPU %", r["loadgen_cpu_pct"]),
             ("peak RSS MB", round(r["mem"]["hwm_kb"] / 1024, 1))]
    return dict(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI-sized smoke run (< 2 minutes)")
    p.add_argument("--only", default="",
                   help="comma-separated scenarios: fanout-lp,p2p-lp,fanout-ws,p2p-ws,idle,agents,redis")
    p.add_argument("--servers", default=f"{OURS},{OURS_SQLITE},{COMETD},{FAYE}",
                   help=f"comma-separated, of {OURS},{OURS_SQLITE},{COMETD},{FAYE},{FLOOR} (the floor is added "
                        f"unless --no-floor; {OURS_SQLITE} is ours with a SQLite event log, the CLI's default)")
    p.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                   help="run bench/floor_server.py in fanout-lp and p2p-lp, and give every server's CPU/100k as a "
                        "ratio to it (default: on)")
    p.add_argument("--cpu-at", type=float, default=CPU_AT, metavar="MSG_S",
                   help="deliveries/s (publishes/s x subscribers per channel) offered at the step every server's "
                        f"CPU/100k is compared at: the step nearest it that every server passed (default {CPU_AT:.0f})")
    p.add_argument("--agents", type=int, help="agents in the agents scenario (default: 1000, --quick 40)")
    p.add_argument("--profile", action="store_true", help="py-spy record cometd-broker during each scenario "
                                                         "(raw stacks in bench/results/profile/)")
    p.add_argument("--redis-via", choices=sorted(VIA_TEXT), default="unix",
                   help="how the redis scenario's brokers reach their Redis (default: its Unix socket)")
    p.add_argument("--out", default=str(RESULTS / "latest"), help="write OUT.json and OUT.md")
    args = p.parse_args()
    # a SIGTERM (timeout, CI) unwinds through the finally blocks that stop the servers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    size_name = "quick" if args.quick else "full"
    size = {**SIZES[size_name]}
    if args.agents:
        size["agents"] = {**size["agents"], "agents": args.agents}
    servers = [s for s in dict.fromkeys([*args.servers.split(","), FLOOR]) if args.floor or s != FLOOR]
    problem = install_peers() if (COMETD in servers or FAYE in servers) else None
    if problem:
        log(f"peers unavailable ({problem}): measuring cometd-broker alone")
        servers = [s for s in servers if s in (OURS, OURS_SQLITE, FLOOR)]
    profile_dir = RESULTS / "profile" if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only.split(",")) if args.only else None
    began = time.monotonic()
    report: dict[str, Any] = {
        "size": size_name, "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
            if shutil.which("node") else None, "pinned": have_taskset()},
        "sizes": {k: v for k, v in size.items()}, "scenarios": {}}
    md = [f"# Benchmark results ({size_name})", "",
          f"`{' '.join(['python', 'bench/run.py', *sys.argv[1:]])}` on {report['started']}; "
          f"{os.cpu_count()} cores, server pinned to core {SERVER_CORE}, load generator to core {LOADGEN_CORE}.", ""]
    order = servers[:]
    plan = [("fanout-lp", "fanout", "long-polling"), ("p2p-lp", "p2p", "long-polling"),
            ("fanout-ws", "fanout", "websocket"), ("p2p-ws", "p2p", "websocket")]
    for key, scenario, transport in plan:
        if wanted and key not in wanted:
            continue
        clients, rates, step = size[scenario]
        log(f"== {key}: {clients} {transport} clients, publish rates {rates}/s, {step} s steps")
        runs = {}
        for name in order:
            if transport == "websocket" and name in (COMETD, FLOOR):
                continue  # cometd-nodejs-server and the floor have no websocket transport
            log(f"-- {name}")
            try:
                runs[name] = throughput(name, scenario, transport, size, profile_dir)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                runs[name] = {"error": str(exc)[:500]}
        order = order[1:] + order[:1]  # alternate which server goes first
        fanout = clients if scenario == "fanout" else 1
        rows = summarize_throughput(runs, fanout, args.cpu_at)
        report["scenarios"][key] = {"clients": clients, "transport": transport, "rates": rates, "summary": rows,
                                    "runs": runs, "cpu_at": args.cpu_at,
                                    "ref_publish_rate": reference_rate(runs, fanout, args.cpu_at)}
        text = table(rows, THROUGHPUT_COLUMNS)
        title = {"fanout": f"fan-out: {clients} {transport} clients on one channel",
                 "p2p": f"point-to-point: {clients} {transport} clients, each on its own channel"}[scenario]
        md += [f"## {title}", "", text, ""]
        ref = report["scenarios"][key]["ref_publish_rate"]
        if ref is not None:
            md += [f"`CPU s/100k at ref`: each server's CPU-seconds per 100k deliveries at the same step, "
                   f"{ref:g} publishes/s offering {ref * fanout:g} deliveries/s (of the steps every server passed, "
                   f"the nearest to `--cpu-at {args.cpu_at:g}`)."
                   + (" `vs floor`: that divided by bench/floor_server.py's (1.0 is the floor; lower is better)."
                      if any(r["server"] == FLOOR for r in rows) else ""), ""]
        log(text)
    if not wanted or "idle" in wanted:
        log(f"== idle: {size['idle']['ws']} websocket sessions, {size['idle']['lp']} parked long-polls")
        runs = {}
        for name in order:
            if name in (FLOOR, OURS_SQLITE):
                continue  # measured in the throughput scenarios only (idle sessions publish nothing)
            log(f"-- {name}")
            try:
                runs[name] = idle(name, size)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                runs[name] = {"error": str(exc)[:500]}
        rows = summarize_idle(runs)
        report["scenarios"]["idle"] = {"summary": rows, "runs": runs}
        text = table(rows, IDLE_COLUMNS)
        md += [f"## idle capacity: {size['idle']['ws']} websocket sessions, then {size['idle']['lp']} parked "
               "long-polls (cometd-nodejs-server: long-polls only)", "", text, ""]
        log(text)
    agent_servers = [name for name in (OURS, OURS_SQLITE) if name in servers]
    if (not wanted or "agents" in wanted) and agent_servers:
        log(f"== agents: {size['agents']['agents']} agents over the contact-center API (cometd-broker only)")
        results = {}
        for name in agent_servers:
            log(f"-- {name}")
            try:
                r = agents(name, size, profile_dir)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                r = {"error": str(exc)[:500]}
            results[name] = summarize_agents(r, report["scenarios"].get("p2p-lp", {}).get("summary"))
            # The memory configuration keeps the key earlier reports used.
            report["scenarios"]["agents" if name == OURS else "agents-sqlite"] = results[name]
        text = agents_table(results)
        md += [f"## agent traffic: {size['agents']['agents']} agents, SMS offered, accepted, "
               f"{size['agents']['rounds']} messages each way (ours only: the peers have no such API)", "", text, ""]
        log(text)
    if (not wanted or "redis" in wanted) and OURS in servers:
        log("== redis: delivered messages per server CPU-second, single process against the Redis engine")
        report["scenarios"]["redis"], text = redis_scenario(size, args.redis_via)
        md += text
    report["seconds"] = round(time.monotonic() - began, 1)
    md += [f"Total run time {report['seconds']} s. Ratios: ours / best peer (msg/s: higher is better; CPU, RSS: "
           "lower is better); the floor is no peer: `vs floor` is each server's CPU/100k over the floor's at the "
           "`ref` step. `loadgen CPU %` near 100 means the load generator, not the server, was the limit."]
    # OUT.json and OUT.md, appended (OUT.md or OUT.json given stands for OUT): with_suffix would cut a
    # name such as "switch-0.001" at its dot.
    stem = args.out.removesuffix(".md").removesuffix(".json")
    json_path, md_path = Path(stem + ".json"), Path(stem + ".md")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    md_path.write_text("\n".join(md) + "\n")
    log(f"wrote {json_path} and {md_path} in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
