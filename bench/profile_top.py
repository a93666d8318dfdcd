"""Summarize a py-spy `--format raw` profile (collapsed stacks): top functions by self and total time.

    python bench/profile_top.py bench/results/profile/fanout-long-polling.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

# py-spy frames look like "function (path/to/file.py:123)"; drop the line number to group by function
_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^:]*)(?::\d+)?\)$")


def short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['fn']} ({path})"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("profile")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    self_t: Counter[str] = Counter()
    total_t: Counter[str] = Counter()
    samples = 0
    with open(args.profile) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [short(x) for x in stack.split(";") if x]
            frames = [x for x in frames if not x.startswith("process ") and not x.startswith("thread ")]
            if not frames:
                continue
            samples += n
            self_t[frames[-1]] += n
            for fr in set(frames):
                total_t[fr] += n
    print(f"{samples} samples")
    print(f"\n## self time (top {args.top})")
    for fr, n in self_t.most_common(args.top):
        print(f"{100 * n / samples:5.1f}%  {fr}")
    print(f"\n## total time, cometd_broker and aiohttp frames (top {args.top})")
    shown = 0
    for fr, n in total_t.most_common():
        if "cometd_broker" in fr or "aiohttp" in fr or "channels/" in fr:
            print(f"{100 * n / samples:5.1f}%  {fr}")
            shown += 1
            if shown >= args.top:
                break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
