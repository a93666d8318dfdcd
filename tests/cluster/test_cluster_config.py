"""The cluster options: --redis (the event log follows it) and --workers (needs it)."""

from __future__ import annotations

import pytest

from cometd_broker.config import BrokerConfig, from_env
from cometd_broker.engine import LocalEngine, open_engine
from cometd_broker.eventlog import MemoryEventLog

URL = "redis://127.0.0.1:6390/0"


def test_with_redis_the_event_log_defaults_to_the_same_redis() -> None:
    config = from_env({}, cli=True, redis=URL)
    assert config.event_log_url == URL
    assert from_env({"COMETD_BROKER_REDIS": URL, "COMETD_BROKER_EVENT_LOG": URL}).event_log_url == URL
    assert BrokerConfig(redis=URL).event_log_url == URL  # embedded: memory: is only the default
    assert from_env({}, cli=True).event_log_url == "cometd-broker-events.db"


def test_another_event_log_named_with_redis_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be used with redis"):
        from_env({"COMETD_BROKER_EVENT_LOG": "memory:"}, redis=URL)
    with pytest.raises(ValueError, match="cannot be used with redis"):
        from_env({}, redis=URL, event_log="events.db")
    with pytest.raises(ValueError, match="same Redis"):
        BrokerConfig(redis=URL, event_log="redis://other:6379/0").validate()


def test_workers_and_redis_are_validated() -> None:
    with pytest.raises(ValueError, match="workers > 1 needs redis"):
        BrokerConfig(workers=2).validate()
    with pytest.raises(ValueError, match="workers must be >= 1"):
        BrokerConfig(workers=0).validate()
    with pytest.raises(ValueError, match="redis must be a redis://"):
        BrokerConfig(redis="http://127.0.0.1:6379").validate()
    BrokerConfig(workers=4, redis=URL).validate()
    assert from_env({"COMETD_BROKER_WORKERS": "3", "COMETD_BROKER_REDIS": URL}).workers == 3


def test_without_redis_the_engine_is_local() -> None:
    engine = open_engine("", MemoryEventLog(), lambda *args: 0)
    assert isinstance(engine, LocalEngine)
    with pytest.raises(ValueError, match="same Redis"):
        open_engine(URL, MemoryEventLog(), lambda *args: 0)
