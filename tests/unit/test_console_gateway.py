"""The console's gateway over a Celery app whose calls never get an answer (no worker): every
call ends with the console's own timeout, and its failures read as the CLI's do."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError

from state_tasks.broker_errors import describe_unreachable, redact, where
from state_tasks.console import gateway as gateway_module
from state_tasks.console.gateway import ConsoleError, StateGateway
from state_tasks.contrib.servers import wait_until
from state_tasks.core.changes import Compacted
from state_tasks.facade import III

BROKER = "redis://:broker-pw@127.0.0.1:1/0"
RESULTS = "redis://:results-pw@127.0.0.1:2/1"


class Unanswered:
    """An AsyncResult that nobody answers: ``get`` waits its whole timeout, then gives up."""

    def __init__(self, waits: list[float]) -> None:
        self.waits = waits

    def get(self, timeout: float, interval: float = 0.5) -> Any:
        self.waits.append(timeout)
        time.sleep(min(timeout, 5.0))
        raise CeleryTimeoutError("The operation timed out.")

    def forget(self) -> None:
        pass


def no_worker_app(waits: list[float]) -> Celery:
    app = Celery("no-worker", broker=BROKER, backend=RESULTS, set_as_current=False)
    app.send_task = lambda *args, **kwargs: Unanswered(waits)
    return app


def test_trigger_calls_end_with_the_consoles_call_timeout() -> None:
    waits: list[float] = []
    facade = III(no_worker_app(waits), timeout_ms=30_000)
    gateway = StateGateway(facade, timeout_s=0.3, threads=1)

    async def calls() -> None:
        for call in (
            gateway.list_triggers(),
            gateway.unregister_trigger("trg_x"),
            gateway.register_trigger({"type": "state", "function_id": "f::x", "config": {}}),
            gateway.call("state::get", {"scope": "s", "key": "k"}),
        ):
            started = time.monotonic()
            with pytest.raises(ConsoleError) as raised:
                await call
            # The call itself gave up (not the console's outer deadline, 2 s later), so its
            # pool thread is free again: with one thread, the next call starts at once
            assert time.monotonic() - started < 1.5
            assert raised.value.code == "TIMEOUT"

    try:
        asyncio.run(calls())
    finally:
        gateway.close()
    assert waits == [0.3, 0.3, 0.3, 0.3]
    assert facade.timeout_ms == 30_000  # the caller's facade is left as it was


def test_a_value_nested_too_deeply_is_no_broker_failure() -> None:
    gateway = StateGateway(III(no_worker_app([])), timeout_s=0.3, threads=1)

    def deep() -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    try:
        with pytest.raises(ConsoleError) as raised:
            asyncio.run(gateway._run(deep, "state::set"))
    finally:
        gateway.close()
    assert raised.value.code == "VALIDATION_ERROR"
    assert "nested too deeply" in raised.value.message


def test_broker_failures_name_broker_and_results_with_no_password() -> None:
    app = no_worker_app([])
    assert where(app) == "redis://:***@127.0.0.1:1/0 (results: redis://:***@127.0.0.1:2/1)"
    error = ConnectionError(f"Error connecting to {RESULTS}\n  and to {BROKER}")
    line = describe_unreachable(app, error)
    assert line == (
        "cannot reach the broker at redis://:***@127.0.0.1:1/0 "
        "(results: redis://:***@127.0.0.1:2/1): Error connecting to "
        "redis://:***@127.0.0.1:2/1 and to redis://:***@127.0.0.1:1/0"
    )
    assert "pw" not in line
    gateway = StateGateway(III(app), timeout_s=0.3, threads=1)

    def unreachable() -> Any:
        raise error

    try:
        with pytest.raises(ConsoleError) as raised:
            asyncio.run(gateway._run(unreachable, "state::get"))
    finally:
        gateway.close()
    assert (raised.value.code, raised.value.message) == ("BROKER_UNREACHABLE", line)


def test_every_url_of_the_app_is_redacted_failover_lists_too() -> None:
    app = Celery("urls", set_as_current=False)
    app.conf.broker_url = "sentinel://:a-pw@h1:26379;sentinel://:b-pw@h2:26379"
    app.conf.broker_read_url = "redis://:read-pw@replica:6379/0"
    app.conf.result_backend = RESULTS
    text = (
        f"{app.conf.broker_url} | sentinel://:b-pw@h2:26379 | "
        f"{app.conf.broker_read_url} | {RESULTS}"
    )
    shown = redact(app, text)
    assert "pw@" not in shown, shown
    assert shown.count("***") == 5


def test_the_gateway_leaves_no_thread_waiting_behind() -> None:
    waits: list[float] = []
    gateway = StateGateway(III(no_worker_app(waits)), timeout_s=0.2, threads=2)
    asyncio.run(_expect_timeout(gateway))
    gateway.close()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(
        t.name.startswith("console-call") for t in threading.enumerate()
    ):
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("console-call")]


async def _expect_timeout(gateway: StateGateway) -> None:
    with pytest.raises(ConsoleError):
        await gateway.list_triggers()


def test_the_feeds_blocking_call_fails_as_the_pages_calls_do_details_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []
    gateway = StateGateway(III(no_worker_app(waits)), timeout_s=0.2, threads=1)
    try:
        with pytest.raises(ConsoleError) as raised:
            gateway.call_blocking("state::changes", {"limit": 1})
        assert raised.value.code == "TIMEOUT" and waits == [0.2]

        # A state function's error keeps its details (COMPACTED: where to read on from)
        def trimmed(request: Any) -> Any:
            raise Compacted("trimmed past 'after'", details={"oldest": "c-oldest"})

        monkeypatch.setattr(gateway.facade, "trigger", trimmed)
        with pytest.raises(ConsoleError) as raised:
            gateway.call_blocking("state::changes", {"after": "c-old"})
        error = raised.value
        assert (error.code, error.details, error.status) == (
            "COMPACTED",
            {"oldest": "c-oldest"},
            410,
        )
        assert error.to_json()["details"] == {"oldest": "c-oldest"}
    finally:
        gateway.close()


def test_a_feed_call_held_by_the_broker_is_given_up_on_and_not_stacked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gateway_module, "DEADLINE_MARGIN_S", 0.1)
    gateway = StateGateway(III(no_worker_app([])), timeout_s=0.1, threads=1)
    release = threading.Event()
    calls: list[Any] = []

    def held(request: Any) -> Any:  # a broker that does not answer: the call never ends
        calls.append(request)
        release.wait(5)
        return {"changes": [], "cursor": "c"}

    monkeypatch.setattr(gateway.facade, "trigger", held)
    try:
        started = time.monotonic()
        with pytest.raises(ConsoleError) as raised:
            gateway.call_blocking("state::changes", {"limit": 1})
        assert raised.value.code == "TIMEOUT" and time.monotonic() - started < 1
        assert "did not answer within 0.1 s" in raised.value.message
        # the next read is refused at once while that one still holds the feed's thread
        with pytest.raises(ConsoleError) as raised:
            gateway.call_blocking("state::changes", {"limit": 1})
        assert "the previous call has not returned yet" in raised.value.message
        assert len(calls) == 1
        release.set()
        wait_until(lambda: gateway._feed_call is not None and gateway._feed_call.done(), 2, "")
        assert gateway.call_blocking("state::changes", {"limit": 1}) == {
            "changes": [],
            "cursor": "c",
        }
    finally:
        release.set()
        gateway.close()
