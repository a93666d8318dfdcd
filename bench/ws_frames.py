"""The cost of reading one websocket frame on the lean path, in process, with no sockets.

    python bench/ws_frames.py                       # microseconds per frame, this checkout
    python bench/ws_frames.py --against HEAD~3      # and the same for lean_websocket.py at a git revision
    python bench/ws_frames.py --size 2000 --repeat 7
    python bench/ws_frames.py --flood               # and 40,000 empty continuation frames in one read

The common case on the hot path: one small masked text frame (FIN=1) arriving in one
data_received call. `transport` feeds it to LeanWebSocket.data_received with the Bayeux handling
replaced by a no-op, so the figure is framing alone (buffering, header, unmasking, UTF-8 check,
dispatch); `reader` feeds it to ws_frames.FrameReader.receive_data alone. With --against, the
transport of that revision is loaded beside this checkout's and both run in turn in one process,
which keeps the comparison fair on a shared, noisy machine. Best of --repeat rounds is reported.

--flood also times FrameReader on a text message opened by one frame and continued by 40,000
empty frames (240 kB, inside the default max_message_size): with the default fragment cap it
fails at MAX_FRAGMENTS; with the cap lifted it shows the cost of reading them all, which must be
linear (a transport that re-summed the fragments' sizes on every frame took seconds here).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODULE = "cometd_broker/http/lean_websocket.py"


def masked_frame(payload: bytes, mask: bytes = b"\x1f\x2e\x3d\x4c", *, first: int = 0x81) -> bytes:
    """A client frame; `first` is its first byte (FIN, RSV, opcode): a whole text message by default."""
    size = len(payload)
    if size < 126:
        head = bytes([first, 0x80 | size])
    elif size < 65536:
        head = bytes([first, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([first, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def load_revision(revision: str) -> Any:
    """lean_websocket.py as it was at `revision`, imported as a sibling module of today's."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:{MODULE}"], check=True,
                            capture_output=True).stdout
    handle, path = tempfile.mkstemp(suffix=".py")
    with os.fdopen(handle, "wb") as out:
        out.write(source)
    importlib.import_module("cometd_broker.http")  # the package its relative imports resolve in
    name = "cometd_broker.http._bench_lean_websocket"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    os.unlink(path)
    return module


def transport_under_test(module: Any, max_size: int) -> Any:
    """A LeanWebSocket of `module` whose Bayeux handling only counts messages."""

    class Counting(module.LeanWebSocket):
        received = 0

        def _message(self, data: bytes) -> None:
            Counting.received += 1

    server = SimpleNamespace(max_size=max_size, websockets=set())
    ctx = SimpleNamespace(sink=None, remote="bench")
    return Counting(server, ctx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=200, help="payload bytes of the text frame (200)")
    parser.add_argument("--number", type=int, default=200_000, help="frames per round (200000)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best is reported (5)")
    parser.add_argument("--against", metavar="REV", help="also measure lean_websocket.py of this git revision")
    parser.add_argument("--flood", action="store_true", help="also time 40,000 empty continuation frames")
    args = parser.parse_args()

    payload = (b'[{"channel":"/meta/connect","clientId":"' + b"x" * args.size)[:args.size - 3] + b'"}]'
    data = masked_frame(payload)
    max_size = 256 * 1024
    candidates: list[tuple[str, Any]] = []
    if args.against:
        candidates.append((f"transport @ {args.against}", load_revision(args.against)))
    from cometd_broker.http import lean_websocket
    candidates.append(("transport (this checkout)", lean_websocket))

    statements: list[tuple[str, Any]] = []
    for label, module in candidates:
        protocol = transport_under_test(module, max_size)
        statements.append((label, lambda p=protocol: p.data_received(data)))
    try:
        from cometd_broker.http.ws_frames import FrameReader
    except ImportError:
        pass
    else:
        reader = FrameReader(max_message_size=max_size)
        statements.append(("FrameReader.receive_data alone", lambda: reader.receive_data(data)))
    # Rounds alternate between the candidates, so a busy moment of the machine costs each the same.
    timings: dict[str, list[float]] = {label: [] for label, _ in statements}
    for _ in range(args.repeat):
        for label, statement in statements:
            timings[label].append(timeit.timeit(statement, number=args.number) / args.number * 1e6)
    print(f"one masked text frame, FIN=1, {len(payload)}-byte payload ({len(data)} bytes on the wire), "
          f"one data_received call each; best (median) of {args.repeat} x {args.number}")
    for label, values in timings.items():
        print(f"  {label:<32} {min(values):6.3f} us  ({statistics.median(values):.3f})")
    if args.flood:
        flood(max_size)


def flood(max_size: int) -> None:
    from cometd_broker.http.ws_frames import MAX_FRAGMENTS, FrameReader

    data = (masked_frame(b"[", first=0x01) + masked_frame(b"", first=0x00) * 40_000
            + masked_frame(b"]", first=0x80))
    print(f"a text message in 1 + 40,000 empty + 1 frames ({len(data)} bytes), one receive_data call")
    for label, cap in ((f"default cap ({MAX_FRAGMENTS} frames)", MAX_FRAGMENTS), ("cap lifted", 100_000)):
        def read(cap: int = cap) -> list[Any]:
            return FrameReader(max_message_size=max_size, max_fragments=cap).receive_data(data)
        events = read()
        took = min(timeit.repeat(read, number=1, repeat=5)) * 1e3
        print(f"  {label:<32} {took:8.2f} ms  -> {type(events[-1]).__name__}")

if __name__ == "__main__":
    main()
