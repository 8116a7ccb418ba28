"""Sentinel URLs and the Celery settings for Sentinel and quorum queues (no server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from state_tasks.core.errors import ConfigError
from state_tasks.core.sentinel import SentinelTarget, parse_sentinel_url
from state_tasks.core.urls import redact_url
from state_tasks.high_availability import queue_type_settings, sentinel_transport_options

SENTINELS = "sentinel://:pw@10.0.0.1:26380/3;sentinel://10.0.0.2;sentinel://10.0.0.3:26381"


def test_a_sentinel_url_names_every_sentinel_and_the_masters_login() -> None:
    assert parse_sentinel_url(SENTINELS) == SentinelTarget(
        (("10.0.0.1", 26380), ("10.0.0.2", 26379), ("10.0.0.3", 26381)), 3, None, "pw"
    )


@pytest.mark.parametrize(
    "url", ["redis://h:1", "sentinel://h:1;redis://h:2", "sentinel://h:x", "sentinel://h/db", ";"]
)
def test_a_bad_sentinel_url_is_a_config_error_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_sentinel_url(url.replace("//h", "//:secret@h", 1))
    assert "secret" not in str(refused.value)


def test_every_part_of_a_url_list_is_redacted() -> None:
    assert redact_url(SENTINELS) == (
        "sentinel://:***@10.0.0.1:26380/3;sentinel://10.0.0.2;sentinel://10.0.0.3:26381"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://h:1/0?password=Zq7", "redis://h:1/0?password=***"),
        (
            "redis://u:Zq7@h:1/0?socket_timeout=1&password=Zq7&db=2",
            "redis://u:***@h:1/0?socket_timeout=1&password=***&db=2",
        ),
        ("rediss://h/0?ssl_password=Zq7#x", "rediss://h/0?ssl_password=***#x"),
        ("sentinel://h:26379?sentinel_password=Zq7", "sentinel://h:26379?sentinel_password=***"),
    ],
)
def test_a_password_in_the_query_is_redacted_too(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_sentinel_options_need_the_master_name() -> None:
    assert sentinel_transport_options("redis://h:1/0", {}) == {}
    with pytest.raises(ConfigError, match="STATE_TASKS_SENTINEL_MASTER"):
        sentinel_transport_options(SENTINELS, {})
    assert sentinel_transport_options(
        SENTINELS,
        {"STATE_TASKS_SENTINEL_MASTER": "mymaster", "STATE_TASKS_SENTINEL_PASSWORD": "s"},
    ) == {"master_name": "mymaster", "sentinel_kwargs": {"password": "s"}}


def test_quorum_settings() -> None:
    settings = queue_type_settings("amqp://g:g@h:5672/v", {"STATE_TASKS_QUEUE_TYPE": "quorum"})
    assert settings["task_default_queue_type"] == "quorum"
    assert settings["task_default_exchange_type"] == "topic"
    assert queue_type_settings("amqp://h//", {"STATE_TASKS_QUEUE_TYPE": "classic"}) == {}


def test_the_package_settings_put_broker_and_results_behind_sentinel() -> None:
    probe = (
        "import json; from state_tasks import settings as s; print(json.dumps("
        "[s.broker_transport_options, s.result_backend_transport_options]))"
    )
    env = {
        **os.environ,
        "CELERY_BROKER_URL": SENTINELS,
        "CELERY_RESULT_BACKEND": SENTINELS,
        "STATE_TASKS_SENTINEL_MASTER": "mymaster",
        "CELERY_VISIBILITY_TIMEOUT": "120",
    }
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    broker, results = json.loads(done.stdout.strip().splitlines()[-1])
    assert broker == {
        "visibility_timeout": 120,
        "socket_connect_timeout": 5.0,
        "master_name": "mymaster",
    }
    assert results == {"master_name": "mymaster"}
