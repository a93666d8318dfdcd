"""Redis's own CPU per appended event: the event log's append script, alone, on a private redis-server.

    python bench/redis_append.py                  # 11 events a call (a 1,000 msg/s publisher's 10 ms tick)
    python bench/redis_append.py --batch 100 --calls 2000 --rounds 4

Calls the script as the Redis engine does (to 1,000 point-to-point streams, each event with the id
floor the engine passes) and reads `INFO commandstats`: EVALSHA's microseconds per call include the
commands the script runs. Redis's CPU is the cluster's shared bottleneck, so this is what a change to
the script should be measured with; the whole cluster's cost is `bench/run.py --only redis`.
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cometd_broker.eventlog.redis import _APPEND

PAYLOAD = b'{"channel":"/p2p/123","data":{"s":1,"t":1234.5,"k":1},"id":"12"}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(client: redis.Redis, sha: str, newest: dict[str, int], args: argparse.Namespace) -> None:
    """One script call of `args.batch` events to random streams, each with the floor the engine would pass."""
    argv: list[object] = ["bench:db0", repr(time.time()), "", "bench:db0:fanout", "header"]
    keys = [f"bench:db0:log:/p2p/{random.randrange(args.streams)}" for _ in range(args.batch)]
    for key in keys:
        floor = newest.get(key, 0)
        argv += [key, PAYLOAD, f"0-{floor + 1}" if floor else ""]
    ids = client.evalsha(sha, 0, *argv).split(b",")
    for key, event_id in zip(keys, ids, strict=True):
        newest[key] = int(event_id)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=11, help="events per script call")
    p.add_argument("--calls", type=int, default=2000, help="measured calls per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--streams", type=int, default=1000)
    args = p.parse_args()
    port = free_port()
    scratch = tempfile.mkdtemp(prefix="bench-redis-append-")
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", scratch], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        per_call = []
        for _ in range(args.rounds):
            client.flushall()
            sha = client.script_load(_APPEND)
            newest: dict[str, int] = {}

            for _ in range(300):  # warm up: every stream exists, as in a running cluster
                call(client, sha, newest, args)
            client.config_resetstat()
            for _ in range(args.calls):
                call(client, sha, newest, args)
            per_call.append(client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])
        best = min(per_call)
        print(f"{best / args.batch:.2f} us of Redis CPU per event (best of {args.rounds} rounds of {args.calls} "
              f"calls, {args.batch} events a call; per call: {', '.join(f'{x:.0f}' for x in sorted(per_call))} us)")
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
