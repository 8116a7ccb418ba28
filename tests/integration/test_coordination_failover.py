"""A lock's fencing tokens keep growing across a Sentinel failover (``wait_replicas: 1``).

One client takes a lock and releases it, over and over, through a worker whose state is
behind the sentinels (``tests/integration/test_sentinel.py``'s deployment: one master, one
replica, three sentinels; the broker and results on the session Redis), while the master is
SIGKILLed, the sentinels promote the replica, and the dead master comes back (empty) and is
made the new master's replica, so that ``WAIT 1`` can be met again. Every token the client
is given is larger than every token it was given before, on the new master too.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.exceptions import TimeoutError as CeleryTimeoutError
from helpers import RedisServer, wait_until
from test_sentinel import SentinelDeployment, demoted, opened, replicated

from state_tasks.contrib.servers import RedisSentinelGroup, _launch_redis
from state_tasks.core.errors import AdapterError

pytestmark = pytest.mark.own_broker

SCOPE, KEY = "locks", "resource"
#: Short, so that a lock taken by a call whose answer was lost is free again soon.
TTL_MS = 3000
#: A call not answered within this is sent again (a worker retries a write that cannot be
#: replicated for 7.75 to 15.5 s before it answers ADAPTER_ERROR).
CALL_TIMEOUT_S = 20
#: The client gives up (and the test fails) if a call is not answered by then.
GIVE_UP_S = 90


@dataclass(frozen=True)
class Acquisition:
    token: int
    sent_at: float  # when the lock call that took it was sent (time.monotonic())
    answered_at: float


class LockClient:
    """In a thread: lock (a new owner each attempt, polled until it is free), then unlock,
    until stopped; every call is sent again while it fails with ADAPTER_ERROR or is not
    answered in time. Records every token acquired, in the order acquired."""

    def __init__(self, deployment: SentinelDeployment) -> None:
        self.app = deployment.app
        self.acquired: list[Acquisition] = []
        self.retries: Counter[str] = Counter()
        self.held_by_other = 0  # lock answers "held": by an attempt whose answer was lost
        self.not_released = 0
        self.failure: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.give_up_at = time.monotonic() + GIVE_UP_S

    def run(self) -> None:
        try:
            attempt = 0
            while not self.stop.is_set():
                attempt += 1
                self.attempt(f"client-{attempt}-{uuid.uuid4().hex[:8]}")
        except BaseException as e:  # reported by the test
            self.failure = e

    def call(self, function_id: str, **kwargs: Any) -> tuple[float, Any]:
        """``(when it was sent, the answer)`` of the call that was answered."""
        while True:
            sent_at = time.monotonic()
            try:
                answer = self.app.send_task(function_id, kwargs=kwargs).get(
                    timeout=CALL_TIMEOUT_S, interval=0.02
                )
                return sent_at, answer
            except (AdapterError, CeleryTimeoutError) as e:
                self.retries[f"{function_id}: {type(e).__name__}"] += 1
                if time.monotonic() > self.give_up_at:
                    raise
                time.sleep(0.1)

    def attempt(self, owner: str) -> None:
        # The same owner while polling: a lock it took in a call whose answer was lost is
        # taken over (with a new token) by its next call.
        while True:
            sent_at, answer = self.call(
                "state::lock", scope=SCOPE, key=KEY, owner=owner, ttl_ms=TTL_MS
            )
            if answer["acquired"]:
                break
            self.held_by_other += 1
            if time.monotonic() > self.give_up_at:
                raise AssertionError(f"the lock was never free again: {answer!r}")
            time.sleep(0.1)
        token = answer["token"]
        self.acquired.append(Acquisition(token, sent_at, time.monotonic()))
        _sent_at, released = self.call("state::unlock", scope=SCOPE, key=KEY, token=token)
        if not released["released"]:  # expired, or taken over by a late retry of a lock
            self.not_released += 1


def names_master(group: RedisSentinelGroup, port: int) -> bool:
    """Whether every sentinel names ``port`` as the master."""
    for sentinel_port in group.sentinel_ports:
        sentinel = redis.Redis(port=sentinel_port, decode_responses=True)
        _host, named = sentinel.execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL", "get-master-addr-by-name", group.master_name
        )
        if int(named) != port:
            return False
    return True


@pytest.fixture
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelGroup]:
    """A Sentinel group of this test's own (its master is killed)."""
    group = RedisSentinelGroup(tmp_path_factory.mktemp("sentinel-locks"))
    yield group
    group.stop()


@pytest.fixture
def state_deployment(
    group: RedisSentinelGroup, redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[SentinelDeployment, redis.Redis]]:
    """State behind the sentinels (wait_replicas: 1); the broker and results on the plain
    session Redis (see test_sentinel.py: kombu sends no WAIT)."""
    yield from opened(group, redis_server, tmp_path, celery_redis=redis_server)


def test_lock_tokens_keep_growing_across_a_sentinel_failover(
    state_deployment: tuple[SentinelDeployment, redis.Redis],
) -> None:
    # Given a worker whose state is behind the sentinels with wait_replicas: 1, and a
    # client taking and releasing a lock through it, over and over
    deployment, _record = state_deployment
    group = deployment.group
    worker = deployment.worker("--concurrency", "2")
    client = LockClient(deployment)
    client.thread.start()
    try:
        wait_until(lambda: len(client.acquired) >= 20 or client.failure, 30, "20 locks taken")
        time.sleep(2)
        # When the master is SIGKILLed, a replica takes over, and the dead master comes back
        # (empty) and is made the new master's replica
        old_master = group.master_port_now()
        killed = group.processes[old_master]
        killed.kill()
        killed.wait(10)
        killed_at = time.monotonic()
        wait_until(lambda: group.master_port_now() != old_master, 30, "a new master")
        new_master = group.master_port_now()
        failed_over_at = time.monotonic()
        wait_until(lambda: names_master(group, new_master), 30, "every sentinel to name it")
        group.processes[old_master] = _launch_redis(
            group.workdir / f"restarted-{old_master}",
            old_master,
            *("--save", "", "--appendonly", "no", "--databases", "1024"),
        )
        wait_until(lambda: demoted(group, old_master), 60, "the old master to be a replica")
        wait_until(lambda: replicated(new_master), 60, "the new master to have its replica")
        # ... and the client goes on for a while on the new master
        wait_until(
            lambda: (
                sum(a.sent_at > failed_over_at for a in client.acquired) >= 20 or client.failure
            ),
            45,
            "20 locks taken on the new master",
        )
        time.sleep(2)
    finally:
        client.stop.set()
        client.thread.join(GIVE_UP_S)
    assert not client.thread.is_alive()
    assert client.failure is None, repr(client.failure)
    # Then the failover happened
    assert new_master != old_master
    assert group.master_port_now() == new_master
    # and every token acquired is larger than every token acquired before it
    tokens = [a.token for a in client.acquired]
    assert all(later > earlier for earlier, later in pairwise(tokens)), tokens
    for i, token in enumerate(tokens):
        assert token > max(tokens[:i], default=0), (i, token, tokens)
    # with locks taken on the old master and on the new one (a lock call sent once the
    # sentinels named the new master cannot have reached the killed one)
    before = [a.token for a in client.acquired if a.answered_at < killed_at]
    after = [a.token for a in client.acquired if a.sent_at > failed_over_at]
    assert len(before) >= 20 and len(after) >= 20, (len(before), len(after), client.retries)
    assert min(after) > max(before)
    # the same worker went on (no restart), and the lock is free at the end
    assert worker.process is not None and worker.process.poll() is None
    assert deployment.call("state::get", scope=SCOPE, key=KEY) is None
    print(
        f"\n{len(tokens)} locks: {len(before)} before the kill (tokens {before[0]}..{before[-1]}),"
        f" {len(after)} on the new master ({after[0]}..{after[-1]}); retried calls:"
        f" {dict(client.retries)}; lock held by a lost attempt: {client.held_by_other} polls;"
        f" unlocks that found it gone: {client.not_released}"
    )
