"""Where a broker's CPU goes, thread by thread, at one fixed point-to-point rate.

    python bench/thread_cpu.py                                   # both configurations, long-polling, 4,000 msg/s
    python bench/thread_cpu.py --transport websocket --rate 8000 --servers cometd-broker-sqlite

Starts each server as `run.py` does (pinned to core 0; `cometd-broker-sqlite` with the CLI's durable
defaults), runs the load generator (core 1) at one rate for one long step, and reads every thread's CPU
(utime + stime in `/proc/PID/task/TID/stat`) over the middle of the step, when the load is steady. The
loop's thread is the process's main thread; with SQLite the busiest other thread is the event log's
writer and the next its WAL checkpointer. For telling the loop's cost from the stores' threads'.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from run import HERE, LOADGEN_CORE, OURS, OURS_SQLITE, PY, ROOT, pinned, start

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of each thread of `pid`."""
    seconds = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return seconds


def measure(name: str, transport: str, rate: int, clients: int, settle: float, window: float) -> None:
    server = start(name, websocket=transport == "websocket")
    try:
        argv = pinned(LOADGEN_CORE, [PY, str(HERE / "loadgen.py"), "--url", server.url, "--scenario", "p2p",
                                     "--transport", transport, "--clients", str(clients), "--rates", str(rate),
                                     "--step-seconds", str(settle + window + 4), "--server-pid", str(server.pid),
                                     "--keep-going"])
        gen = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(settle)  # sessions set up, and the step under way
        before, started = thread_cpu(server.pid), time.monotonic()
        time.sleep(window)
        after, took = thread_cpu(server.pid), time.monotonic() - started
        gen.communicate(timeout=120)
    finally:
        server.stop()
    used = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    total = sum(used.values())
    print(f"{name}, {transport}, {rate} msg/s: {100 * total / took:.1f}% of a core, "
          f"{1e6 * total / (took * rate):.1f} us per delivery")
    others = sorted((tid for tid in used if tid != server.pid), key=lambda tid: -used[tid])
    for label, tid in [("the loop's (main) thread", server.pid), *((f"thread {tid}", tid) for tid in others)]:
        if used.get(tid, 0.0) >= 0.01:
            print(f"  {label:28s} {100 * used[tid] / took:5.1f}%  {1e6 * used[tid] / (took * rate):6.1f} us/delivery")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default=f"{OURS},{OURS_SQLITE}")
    p.add_argument("--transport", choices=["long-polling", "websocket"], default="long-polling")
    p.add_argument("--rate", type=int, default=4000, help="publishes per second, round-robin over the clients")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--settle", type=float, default=10.0, help="seconds before the window (setup and warm-up)")
    p.add_argument("--window", type=float, default=12.0, help="seconds measured")
    args = p.parse_args()
    for name in args.servers.split(","):
        measure(name, args.transport, args.rate, args.clients, args.settle, args.window)
    return 0


if __name__ == "__main__":
    sys.exit(main())
