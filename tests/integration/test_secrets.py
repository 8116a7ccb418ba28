"""Secrets never show: after a run with passworded URLs everywhere (broker, results,
state, a Bridge's remote, the handlers' own Redis), the password is in no worker log, no
CLI output, no error message and no task event (what Flower shows)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import (
    HANDLERS,
    Client,
    RedisServer,
    Worker,
    adapter_yaml,
    redis_state_yaml,
    wait_until,
)

from state_tasks.contrib.servers import CELERY, RedisSentinelGroup
from state_tasks.core.errors import StateError

pytestmark = [pytest.mark.integration, pytest.mark.own_broker]

PASSWORD = "Pw-never-SHOWN-7731"
CLI = [os.path.join(os.path.dirname(sys.executable), "state-tasks")]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "STATE_"))}
    return subprocess.run(
        [*CLI, "--timeout", "5", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_password_in_logs_cli_errors_or_task_events(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password=PASSWORD)
    url = server.url(1)
    state = tmp_path / "state.yaml"
    state.write_text(redis_state_yaml(server.url(2), "secrets"))
    env = {"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url}
    worker = Worker(
        tmp_path / "w",
        {**env, "STATE_CONFIG": str(state), "RECORD_REDIS_URL": server.url(3)},
        includes=("trigger_handlers",),
        pythonpath=[HANDLERS],
    ).start()
    # A Bridge worker whose remote broker is passworded and unreachable
    bridge_yaml = tmp_path / "bridge.yaml"
    dead = f"redis://:{PASSWORD}@127.0.0.1:1/0"
    bridge_yaml.write_text(
        adapter_yaml(
            "modules::state::adapters::Bridge",
            broker_url=dead,
            result_backend=dead,
            timeout_ms=2000,
        )
    )
    bridge_env = {"CELERY_BROKER_URL": server.url(4), "CELERY_RESULT_BACKEND": server.url(4)}
    bridge = Worker(tmp_path / "b", {**bridge_env, "STATE_CONFIG": str(bridge_yaml)}).start()
    client = Client(url, url)
    bridge_client = Client(server.url(4), server.url(4))
    events: list[str] = []
    stop = threading.Event()

    def capture() -> None:  # what Flower reads: the task events
        with client.app.connection_for_read() as connection:
            receiver = client.app.events.Receiver(
                connection, handlers={"*": lambda event: events.append(repr(event))}
            )
            while not stop.is_set():
                try:
                    receiver.capture(limit=None, timeout=1, wakeup=False)
                except TimeoutError:
                    continue

    listener = threading.Thread(target=capture, daemon=True)
    listener.start()
    texts: list[str] = []
    try:
        # (once the receiver hears the workers' events: it misses those sent before it
        # consumes, and the calls below must be heard)
        def heard() -> bool:
            client.call("state::get", scope="sec", key="warm-up")
            return any("state::get" in e for e in list(events))

        wait_until(heard, 20, "the task events of a call")
        # When state functions succeed, fail, fire triggers and go through the Bridge
        client.iii.register_trigger(
            {"type": "state", "function_id": "test::onAny", "config": {"scope": "sec"}}
        )
        client.call("state::set", scope="sec", key="k", value={"n": 1})
        client.call("state::update", scope="sec", key="k", ops=[{"increment": {"field": "n"}}])
        errors: list[Any] = []
        for call in (
            lambda: client.call("state::update", scope="sec", key="k", ops=[{"nope": 1}]),
            lambda: bridge_client.call("state::get", timeout_s=30, scope="s", key="k"),
        ):
            with pytest.raises(StateError) as info:
                call()
            errors.append(info.value)
        texts += [str(e) for e in errors] + [repr(e) for e in errors]
        assert "redis://:***@127.0.0.1:1/0" in str(errors[1])
        # And the CLI succeeds and fails with passworded URLs
        ok = cli(env, "get", "sec", "k")
        assert ok.returncode == 0, ok.stderr
        down = cli({"CELERY_BROKER_URL": dead, "CELERY_RESULT_BACKEND": dead}, "get", "s", "k")
        assert down.returncode == 3
        assert "***" in down.stderr
        texts += [ok.stdout, ok.stderr, down.stdout, down.stderr]
        no_worker = cli(
            {"CELERY_BROKER_URL": server.url(9), "CELERY_RESULT_BACKEND": server.url(9)},
            "get",
            "s",
            "k",
        )
        texts += [no_worker.stdout, no_worker.stderr]
        # (the handler ran: its events are in the stream too)
        record = redis.Redis.from_url(server.url(3))
        assert record.llen("record:any") >= 1
    finally:
        stop.set()
        listener.join(10)
        client.close()
        bridge_client.close()
        worker.stop()
        bridge.stop()
        server.stop()
    texts += [worker.log(), bridge.log()]
    # Then the password is nowhere
    assert events and any("state::set" in e for e in events)
    for text in [*texts, *events]:
        assert PASSWORD not in text


MASTER_PASSWORD = "Master-pw-SECRET-4417"
SENTINEL_PASSWORD = "Sentinel-pw-SECRET-5528"


def passworded_sentinels(group: RedisSentinelGroup) -> None:
    """The master and its replica need MASTER_PASSWORD; the sentinels SENTINEL_PASSWORD."""
    for port in (group.master_port, group.replica_port):
        node = redis.Redis(port=port)
        node.config_set("masterauth", MASTER_PASSWORD)
        node.config_set("requirepass", MASTER_PASSWORD)
    for port in group.sentinel_ports:
        sentinel = redis.Redis(port=port)
        sentinel.execute_command("SENTINEL", "SET", group.master_name, "auth-pass", MASTER_PASSWORD)
        sentinel.execute_command("SENTINEL", "CONFIG", "SET", "sentinel-pass", SENTINEL_PASSWORD)
        sentinel.execute_command("ACL", "SETUSER", "default", "resetpass", f">{SENTINEL_PASSWORD}")


def test_no_password_in_inspect_answers_or_in_errors_about_malformed_urls(tmp_path: Path) -> None:
    # Given a worker on a broker and results behind passworded sentinels, in front of a
    # passworded master
    group = RedisSentinelGroup(tmp_path / "sentinels")
    passworded_sentinels(group)
    first, *others = group.sentinel_ports
    url = ";".join(
        [f"sentinel://:{MASTER_PASSWORD}@127.0.0.1:{first}/1"]
        + [f"sentinel://127.0.0.1:{port}/1" for port in others]
    )
    env = {
        "CELERY_BROKER_URL": url,
        "CELERY_RESULT_BACKEND": url,
        "STATE_TASKS_SENTINEL_MASTER": group.master_name,
        "STATE_TASKS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
    }
    worker = Worker(tmp_path / "w", env).start()
    texts: list[str] = []
    try:
        # When a client asks the worker for its stats, report and configuration
        ambient = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "STATE_"))}
        for command in ("stats", "report", "conf"):
            done = subprocess.run(
                [*CELERY, "-A", "state_tasks", "inspect", command, "--timeout", "5", "--json"],
                env={**ambient, **env},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            texts += [done.stdout, done.stderr]
        stats = json.loads(texts[0].strip().splitlines()[-1])
        (answer,) = stats.values()
        # (the sentinels' options are in the answer, their password is not)
        assert answer["broker"]["transport_options"]["sentinel_kwargs"] == {"password": "***"}
        # And the CLI is used with the right URLs, and with malformed ones
        ok = cli(env, "set", "s", "k", "1")
        assert ok.returncode == 0, ok.stderr
        texts += [ok.stdout, ok.stderr]
        for broker in (
            f"redis://127.0.0.1:{group.master_port}/0?password={MASTER_PASSWORD}",
            f"redis://:{MASTER_PASSWORD}/x@127.0.0.1:{group.master_port}/0",
            f"redis://:x/{MASTER_PASSWORD}@127.0.0.1:{group.master_port}/0",
            f"redis://:{MASTER_PASSWORD}#x@127.0.0.1:{group.master_port}/0",
            f"redis://:{MASTER_PASSWORD}@127.0.0.1:{group.master_port}:99/0",
        ):
            bad = cli(
                {"CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": broker}, "get", "s", "k"
            )
            # Then each malformed URL is one line, exit 2, the URL masked
            assert bad.returncode == 2, bad.stderr
            assert bad.stderr.startswith("state-tasks: CONFIG_ERROR: CELERY_BROKER_URL 'redis://")
            assert len(bad.stderr.splitlines()) == 1 and "***" in bad.stderr, bad.stderr
            texts += [bad.stdout, bad.stderr]
    finally:
        worker.stop()
        group.stop()
    # And no password, nor a part of one, shows anywhere
    texts.append(worker.log())
    for text in texts:
        for secret in (MASTER_PASSWORD, SENTINEL_PASSWORD):
            assert secret not in text and secret[:9] not in text, text
