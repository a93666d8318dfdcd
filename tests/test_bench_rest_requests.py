"""bench/rest_requests.py runs against the current contact-center API: login, a contact-center session,
Ready and NotReady, and reports the server's CPU per request for each kind."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_the_rest_bench_measures_both_kinds_of_request() -> None:
    done = subprocess.run([sys.executable, "rest_requests.py", "--servers", "cometd-broker", "--seconds", "0.5",
                           "--connections", "2"], cwd=BENCH, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = re.findall(r"^\| cometd-broker \| (GET|POST) [^|]+ \| (\d+) \| [\d.]+ \| ([\d.]+) \|$", done.stdout, re.M)
    assert [kind for kind, _, _ in rows] == ["GET", "POST"], done.stdout
    assert all(int(rate) > 0 and float(cost) > 0 for _, rate, cost in rows), done.stdout
