"""`serve --workers N`: a scrape reaching any worker answers for every worker (worker_metrics.py).
The real supervisor and workers are in tests/cluster/test_cluster.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from prometheus_client.parser import text_string_to_metric_families

from cometd_broker import BrokerConfig, create_app
from cometd_broker.metrics import METRICS, Exposition, share_worker_metrics
from cometd_broker.worker_metrics import SharedMetrics, merge_pages


def page(worker: str, sessions: int, extra: bool = False) -> bytes:
    out = Exposition((("worker", worker),))
    out.one("cometd_sessions", "gauge", "Sessions", sessions)
    if extra:  # a family only some workers have yet (e.g. after their first REST request)
        out.family("gws_requests_total", "counter", "REST requests")
        out.sample("gws_requests_total", 3, (("route", "/api/v2/me"),))
    out.family("cometd_latency_seconds", "histogram", "Latency")
    out.sample("cometd_latency_seconds_bucket", 1, (("le", "+Inf"),))
    out.sample("cometd_latency_seconds_count", 1)
    return out.text()


def test_pages_merge_into_one_family_each_with_every_workers_samples() -> None:
    merged = merge_pages([page("1", 5), page("2", 7, extra=True)]).decode()
    assert merged.count("# HELP cometd_sessions ") == merged.count("# TYPE cometd_sessions ") == 1
    lines = merged.splitlines()
    # The text format wants a family's samples together, right after its HELP and TYPE.
    start = lines.index("# TYPE cometd_sessions gauge")
    assert lines[start + 1:start + 3] == ['cometd_sessions{worker="1"} 5', 'cometd_sessions{worker="2"} 7']
    start = lines.index("# TYPE cometd_latency_seconds histogram")
    assert lines[start + 1:start + 5] == [
        'cometd_latency_seconds_bucket{worker="1",le="+Inf"} 1', 'cometd_latency_seconds_count{worker="1"} 1',
        'cometd_latency_seconds_bucket{worker="2",le="+Inf"} 1', 'cometd_latency_seconds_count{worker="2"} 1']
    assert 'gws_requests_total{worker="2",route="/api/v2/me"} 3' in lines
    assert merged.count("# TYPE ") == 3 and merged.endswith("\n")
    # Prometheus's own parser reads it: each family once, with every worker's samples.
    families = {family.name: family for family in text_string_to_metric_families(merged)}
    assert sorted(families) == ["cometd_latency_seconds", "cometd_sessions", "gws_requests"]
    assert [sample.labels["worker"] for sample in families["cometd_sessions"].samples] == ["1", "2"]


def test_the_scraped_worker_answers_fresh_for_itself_and_leaves_out_stale_siblings(tmp_path) -> None:
    one = SharedMetrics(tmp_path, 1, lambda: page("1", 1))
    two = SharedMetrics(tmp_path, 2, lambda: page("2", 2))
    three = SharedMetrics(tmp_path, 3, lambda: page("3", 3))
    for worker in (one, two, three):
        worker.write()
    assert sorted(os.listdir(tmp_path)) == ["1.prom", "2.prom", "3.prom"]  # no temporary left behind
    old = time.time() - 60
    os.utime(tmp_path / "3.prom", (old, old))  # worker 3 died (or hangs) a minute ago
    merged = one.combined(page("1", 10)).decode()  # worker 1's own page is rendered now, not read back
    sessions = [line for line in merged.splitlines() if line.startswith("cometd_sessions{")]
    assert sessions == ['cometd_sessions{worker="1"} 10', 'cometd_sessions{worker="2"} 2']
    assert 'worker="3"' not in merged


async def test_a_worker_keeps_its_page_current_and_removes_it_when_it_stops(tmp_path) -> None:
    app = create_app(BrokerConfig(allow_anonymous=True))
    share_worker_metrics(app, str(tmp_path), 2, interval=0.05)  # (not every 2 s: the test need not wait)
    metrics = app[METRICS]
    sharing = app.cleanup_ctx[-1](app)  # what the app runs at startup and cleanup
    await sharing.__anext__()
    try:
        await asyncio.sleep(0.01)  # the page is written at once
        first = (tmp_path / "2.prom").read_text()
        assert 'cometd_ready{worker="2"} 1' in first and 'cometd_sessions{worker="2",transport="websocket"} 0' in first
        metrics.broker.stats.handshakes += 1  # something changes ...
        await asyncio.sleep(0.2)  # ... and the next write has it
        assert 'cometd_handshakes_total{worker="2",result="accepted"} 1' in (tmp_path / "2.prom").read_text()
        scraped = metrics.scrape().decode()
        assert scraped.count("# TYPE cometd_sessions gauge") == 1 and 'cometd_ready{worker="2"} 1' in scraped
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await sharing.__anext__()
    assert not (tmp_path / "2.prom").exists()


def test_every_workers_process_families_merge_into_one_valid_page(tmp_path) -> None:
    """Each worker's page has its own process_* and python_* samples, labelled with its index; the
    merged page declares each family once and Prometheus's parser reads every worker's samples."""
    from test_metrics import RUNTIME_FAMILIES, check_well_formed, families_of

    metrics = {index: create_app(BrokerConfig(allow_anonymous=True))[METRICS] for index in ("1", "2", "3")}
    shared = {index: SharedMetrics(tmp_path, int(index), lambda index=index: metrics[index].page(
        (("worker", index),))) for index in metrics}
    shared["2"].write()
    shared["3"].write()
    merged = shared["1"].combined(metrics["1"].page(shared["1"].labels)).decode()  # worker 1 is scraped
    check_well_formed(merged)  # HELP then TYPE, each family once, its samples together
    families = families_of(merged)
    only_with_proc = {"process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds",
                      "process_start_time_seconds"}
    expected = set(RUNTIME_FAMILIES) - (set() if os.path.exists("/proc/self/stat") else only_with_proc)
    for name in expected:
        kind, _, labels, samples = families[name]
        assert (kind, labels) == RUNTIME_FAMILIES[name], name
        per_worker = len(samples) // 3
        assert per_worker >= 1, name
        assert [sample.labels["worker"] for sample in samples] == [w for w in "123" for _ in range(per_worker)], name
