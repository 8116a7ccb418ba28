"""Hostile callers: oversized, deeply nested, huge-named, control-character and flooding
calls are refused or absorbed with a clear error, the worker keeps serving, and nothing
is stored that should not be."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from celery import Celery
from helpers import Client, Deployment, wait_until
from kombu.exceptions import EncodeError

from state_tasks.core.errors import ValidationError, ValueTooLarge

pytestmark = pytest.mark.integration

MB = 1024 * 1024


def send_raw(app: Celery, task_name: str, kwargs_json: str) -> str:
    """Publish a state task whose JSON body is written by hand (what a client that skips
    our serializer could send); return its task id."""
    task_id = str(uuid.uuid4())
    message = app.amqp.as_task_v2(task_id, task_name, args=(), kwargs={})
    tail = '{"callbacks": null, "errbacks": null, "chain": null, "chord": null}'
    body = f"[[], {kwargs_json}, {tail}]"
    with app.producer_or_acquire() as producer:
        producer.publish(
            body.encode(),
            exchange="",
            routing_key=app.conf.task_default_queue,
            headers=message.headers,
            content_type="application/json",
            content_encoding="utf-8",
            **message.properties,
        )
    return task_id


def alive(deployment: Deployment, scope: str) -> None:
    """The deployment still serves: a set and a get of a fresh key answer at once."""
    deployment.call("state::set", scope=scope, key="alive", value=1)
    assert deployment.call("state::get", scope=scope, key="alive") == 1
    for worker in deployment.workers:
        assert worker.process is not None and worker.process.poll() is None, worker.tail()


def test_a_10_mb_value_is_refused_and_nothing_is_stored(deployment: Deployment) -> None:
    scope = f"big-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ValueTooLarge) as info:
        deployment.client.call(
            "state::set", timeout_s=60, scope=scope, key="k", value="x" * (10 * MB)
        )
    assert info.value.code == "VALUE_TOO_LARGE"
    assert "the limit is 1048576 bytes" in info.value.message
    assert deployment.call("state::get", scope=scope, key="k") is None
    alive(deployment, scope)


def test_a_1_mb_key_is_refused(deployment: Deployment) -> None:
    scope = f"bigkey-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ValidationError) as info:
        deployment.call("state::set", scope=scope, key="k" * MB, value=1)
    assert info.value.code == "VALIDATION_ERROR"
    assert "1048576 bytes in UTF-8; the limit is 1024" in info.value.message
    assert len(info.value.message) < 2000  # the error does not echo the megabyte back
    assert deployment.call("state::list", scope=scope) == []
    alive(deployment, scope)


def test_json_nested_100000_levels_cannot_be_sent_by_a_client(deployment: Deployment) -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises((EncodeError, RecursionError, ValueError)):
        deployment.client.app.send_task(
            "state::set", kwargs={"scope": "s", "key": "k", "value": deep}
        )


@pytest.mark.parametrize("depth", [300, 900, 100_000])
def test_a_message_nested_too_deep_is_refused_by_the_worker(
    deployment: Deployment, depth: int
) -> None:
    # Given a hand-written message (what a client that skips our serializer could send)
    scope = f"deep{depth}-{uuid.uuid4().hex[:6]}"
    nested = "[" * depth + "]" * depth
    raw = f'{{"scope": "{scope}", "key": "k", "value": {nested}}}'
    task_id = send_raw(deployment.client.app, "state::set", raw)

    # Then the worker refuses it when decoding it, and logs why in one line
    def refusal() -> str:
        for worker in deployment.workers:
            for line in worker.log().splitlines():
                if "Can't decode message body" in line and task_id in line:
                    return line
        return ""

    wait_until(refusal, 20, "the worker to refuse the message")
    # (a message deeper than Python's decoder reaches is worded the same: no RecursionError)
    assert "nested deeper than 256 levels" in refusal() and "Recursion" not in refusal()
    # One line: the worker's next line is a log record, not a traceback or a dump of the body
    for worker in deployment.workers:
        log = worker.log().splitlines()
        if refusal() in log:
            after = log[log.index(refusal()) + 1 :]
            assert not after or after[0].startswith("["), after[:5]
    # And nothing is stored, and every worker process still serves (a 900-deep message
    # once killed prefork workers: their pool could not pickle it for the child)
    assert deployment.call("state::get", scope=scope, key="k") is None
    alive(deployment, scope)


def test_a_value_nested_200_levels_is_stored_whole(deployment: Deployment) -> None:
    scope = f"deep200-{uuid.uuid4().hex[:6]}"
    deep: Any = "bottom"
    for _ in range(200):
        deep = {"d": deep}
    deployment.call("state::set", scope=scope, key="k", value=deep)
    assert deployment.call("state::get", scope=scope, key="k") == deep


CONTROL = "\x00\x01\x07\x08\t\n\r\x1b[31m\x7f\u200b\u202e\ufeff"


def test_a_scope_full_of_control_characters_is_just_a_name(deployment: Deployment) -> None:
    scope = f"{CONTROL}-{uuid.uuid4().hex[:6]}"
    key = CONTROL
    answer = deployment.call("state::set", scope=scope, key=key, value={"v": CONTROL})
    assert (answer["old_value"], answer["new_value"]) == (None, {"v": CONTROL})
    assert deployment.call("state::get", scope=scope, key=key) == {"v": CONTROL}
    assert deployment.call("state::list", scope=scope) == [{"v": CONTROL}]
    assert scope in deployment.call("state::list_groups")["groups"]
    with pytest.raises(Exception) as info:
        deployment.call("state::update", scope=scope, key=key, ops=[{"increment": {"field": "v"}}])
    assert getattr(info.value, "code", None) == "UPDATE_OP_ERROR"
    # No raw control character reaches the worker's log (names are logged as repr)
    for worker in deployment.workers:
        log = worker.log()
        assert "\x1b" not in log and "\x00" not in log and "\u202e" not in log
    assert deployment.call("state::delete", scope=scope, key=key) == {"v": CONTROL}
    alive(deployment, scope)


def test_a_flood_of_10000_calls_on_one_key_is_absorbed(redis_deployment: Deployment) -> None:
    # Given 10,000 increments of one key sent as fast as one client can send them
    scope = f"flood-{uuid.uuid4().hex[:6]}"
    app = redis_deployment.client.app
    flooding = threading.Event()
    flooding.set()
    latencies_s: list[float] = []
    answered_at: list[float] = []
    failures: list[BaseException] = []

    def another_caller() -> None:
        # Meanwhile, another caller keeps reading another scope
        other = Client(
            redis_deployment.broker_url,
            redis_deployment.backend_url,
            **redis_deployment.queue_settings,
        )
        try:
            while flooding.is_set():
                asked = time.monotonic()
                other.call("state::get", timeout_s=60, scope=f"{scope}-other", key="k")
                answered_at.append(time.monotonic())
                latencies_s.append(answered_at[-1] - asked)
                time.sleep(0.2)
        except BaseException as error:  # reported by the test below
            failures.append(error)
        finally:
            other.close()

    reader = threading.Thread(target=another_caller)
    reader.start()
    started = time.monotonic()
    try:
        for _ in range(10_000):
            app.send_task(
                "state::update",
                kwargs={"scope": scope, "key": "k", "ops": [{"increment": {"field": "n"}}]},
                ignore_result=True,
            )
        sent_s = time.monotonic() - started
        # Then every increment is applied exactly once (a read waits its turn behind the
        # backlog, which may take longer than a call's usual 20 s on a loaded machine)
        wait_until(
            lambda: (
                redis_deployment.call("state::get", timeout_s=120, scope=scope, key="k")
                == {"n": 10_000}
            ),
            120,
            "all 10,000 increments",
            interval_s=0.5,
        )
        applied_at = time.monotonic()
    finally:
        flooding.clear()
        reader.join(120)
    took_s = applied_at - started
    print(
        f"flood: sent in {sent_s:.1f}s, applied in {took_s:.1f}s; the other caller: "
        f"{len(latencies_s)} calls, slowest {max(latencies_s):.2f}s"
    )
    # And the other caller was served all along: none of its calls failed, several were
    # answered while the flood was still being applied, and none waited longer than the
    # backlog took to drain (one queue is first in, first out: it waits its turn, no more)
    assert not failures and not reader.is_alive()
    assert sum(1 for at in answered_at if at < applied_at) >= 3
    assert max(latencies_s) < took_s
    alive(redis_deployment, scope)
