"""bench/run.py's agents summary: what one core sustains, and the cost beside the broker's own point-to-point."""

from __future__ import annotations

from bench.run import OURS, OURS_SQLITE, agents_table, summarize_agents


def agents_run(**extra: object) -> dict[str, object]:
    return {"agents": 10, "accepted": 10, "rest_ops": 120, "rest_ops_per_s": 60.0, "notifications": 160,
            "notifications_per_s": 80.0, "offer_ms": {"p50": 1, "p99": 2, "max": 3},
            "customer_msg_ms": {"p50": 1, "p99": 2, "max": 3}, "agent_msg_ms": {"p50": 1, "p99": 2, "max": 3},
            "lost": 0, "messages_expected": 100, "rest_failures": 0, "server_cpu_s": 0.048,
            "server_cpu_per_100k": 30.0, "server_cpu_pct": 50.0, "loadgen_cpu_pct": 40.0,
            "mem": {"hwm_kb": 10240}, **extra}


def test_rest_operations_per_cpu_second_and_the_ratio_to_point_to_point_of_the_same_run() -> None:
    p2p = [{"server": "floor", "ref_msg_s": 8000, "ref_cpu_s_per_100k": 2.0},
           {"server": OURS, "ref_msg_s": 8000, "ref_cpu_s_per_100k": 10.0}]
    r = summarize_agents(agents_run(), p2p)
    assert r["rest_ops_per_cpu_s"] == 2500.0  # 120 operations in 0.048 CPU-seconds
    assert (r["p2p_ref_msg_s"], r["p2p_ref_cpu_s_per_100k"], r["ratio_cpu_vs_p2p"]) == (8000, 10.0, 3.0)
    table = agents_table({OURS: r})
    assert "| 3.0x (of 10.0 at 8000 msg/s) |" in table and "| 2500.0 |" in table


def test_without_point_to_point_in_the_run_there_is_no_ratio() -> None:
    r = summarize_agents(agents_run(), None)
    assert "ratio_cpu_vs_p2p" not in r and r["rest_ops_per_cpu_s"] == 2500.0
    assert "point-to-point" not in agents_table({OURS: r})
    assert summarize_agents({"error": "loadgen exited 1"}, None) == {"error": "loadgen exited 1"}


def test_each_configuration_is_a_column_and_a_failed_one_says_why() -> None:
    p2p = [{"server": OURS, "ref_msg_s": 8000, "ref_cpu_s_per_100k": 10.0}]
    memory = summarize_agents(agents_run(), p2p)
    durable = summarize_agents(agents_run(server_cpu_s=0.096, server_cpu_per_100k=60.0), p2p)
    table = agents_table({OURS: memory, OURS_SQLITE: durable})
    assert table.splitlines()[0] == f"| measure | {OURS} | {OURS_SQLITE} |"
    assert "| 3.0x (of 10.0 at 8000 msg/s) | 6.0x (of 10.0 at 8000 msg/s) |" in table  # both against memory's
    assert "| 2500.0 | 1250.0 |" in table
    failed = agents_table({OURS: memory, OURS_SQLITE: {"error": "loadgen exited 1"}})
    assert f"{OURS_SQLITE}: error: loadgen exited 1" in failed and "| 2500.0 |  |" in failed
