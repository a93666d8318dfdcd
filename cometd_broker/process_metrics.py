"""The process and runtime families every Prometheus exporter has: CPU, memory, file descriptors,
start time, garbage collection and the Python version.

Named, typed and described exactly as prometheus_client's ProcessCollector, GCCollector and
PlatformCollector expose them, so dashboards and alerts written for any Python exporter work
unchanged; read the same way (Linux: /proc/self/stat, /proc/self/limits, /proc/self/fd), without
depending on that package. A scrape costs three small reads and a directory listing, no subprocess.
Where /proc is missing (not Linux) the process families are left out, except the two the standard
library answers anywhere: CPU seconds (os.times) and the open-file limit (resource.getrlimit).
"""

from __future__ import annotations

import gc
import os
import platform
from collections.abc import Sequence
from typing import Protocol

try:
    import resource
except ImportError:  # not Unix
    resource = None  # type: ignore[assignment]


class Exposition(Protocol):
    """What these families are written to: metrics.Exposition (not imported: it imports this module)."""

    def family(self, name: str, kind: str, help_text: str) -> None: ...

    def sample(self, name: str, value: float, labels: Sequence[tuple[str, str]] = ()) -> None: ...

    def one(self, name: str, kind: str, help_text: str, value: float,
            labels: Sequence[tuple[str, str]] = ()) -> None: ...


class ProcessMetrics:
    """Writes the process families of the process reading `proc` (the /proc of the running system)."""

    def __init__(self, proc: str = "/proc") -> None:
        self._self = os.path.join(proc, "self")
        # What does not change while the process runs is read once.
        self._boot_time = _boot_time(proc)  # 0.0: no /proc; the families /proc answers are left out
        try:
            self._ticks = float(os.sysconf("SC_CLK_TCK"))
        except (ValueError, OSError, AttributeError):
            self._ticks = 100.0
        self._pagesize = resource.getpagesize() if resource is not None else 4096

    def write(self, out: Exposition) -> None:
        stat = self._stat() if self._boot_time else None
        if stat is not None:
            # /proc/<pid>/stat after the command name: fields 3 (state) on, so field N is at N - 3.
            out.one("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", int(stat[20]))
            out.one("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
                    int(stat[21]) * self._pagesize)
            out.one("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
                    int(stat[19]) / self._ticks + self._boot_time)
            cpu = (int(stat[11]) + int(stat[12])) / self._ticks
        else:
            times = os.times()
            cpu = times.user + times.system
        out.one("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", cpu)
        open_fds = self._open_fds() if self._boot_time else None
        if open_fds is not None:
            out.one("process_open_fds", "gauge", "Number of open file descriptors.", open_fds)
        max_fds = _max_fds()
        if max_fds is not None:
            out.one("process_max_fds", "gauge", "Maximum number of open file descriptors.", max_fds)

    def _stat(self) -> list[bytes] | None:
        try:
            with open(os.path.join(self._self, "stat"), "rb") as handle:
                # The command name, in parentheses, may itself hold spaces and ")": split after the last.
                fields = handle.read().rpartition(b")")[2].split()
        except OSError:
            return None
        return fields if len(fields) > 21 else None

    def _open_fds(self) -> int | None:
        try:
            return len(os.listdir(os.path.join(self._self, "fd")))
        except OSError:
            return None


def _boot_time(proc: str) -> float:
    """When the system booted (Unix time), from /proc/stat; 0.0 without it."""
    try:
        with open(os.path.join(proc, "stat"), "rb") as handle:
            for line in handle:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _max_fds() -> float | None:
    """The soft limit on open files (what /proc/self/limits calls "Max open files"); None if unknown."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return float("inf") if soft == resource.RLIM_INFINITY else soft


def write_gc_metrics(out: Exposition) -> None:
    """Collections and collected objects per generation (CPython's gc.get_stats)."""
    if not hasattr(gc, "get_stats") or platform.python_implementation() != "CPython":
        return
    stats = gc.get_stats()
    for name, key, help_text in (
            ("python_gc_objects_collected_total", "collected", "Objects collected during gc"),
            ("python_gc_objects_uncollectable_total", "uncollectable", "Uncollectable objects found during GC"),
            ("python_gc_collections_total", "collections", "Number of times this generation was collected")):
        out.family(name, "counter", help_text)
        for generation, stat in enumerate(stats):
            out.sample(name, stat[key], (("generation", str(generation)),))


_major, _minor, _patchlevel = platform.python_version_tuple()
PYTHON_INFO = (("implementation", platform.python_implementation()), ("major", _major), ("minor", _minor),
               ("patchlevel", _patchlevel), ("version", platform.python_version()))


def write_python_info(out: Exposition) -> None:
    out.one("python_info", "gauge", "Python platform information", 1, PYTHON_INFO)


PROCESS = ProcessMetrics()


def write_runtime_metrics(out: Exposition, process: ProcessMetrics = PROCESS) -> None:
    """Every family of this module, as a scrape writes them."""
    process.write(out)
    write_gc_metrics(out)
    write_python_info(out)
