"""The console's view of the workers from their events: runs and failures per task name (a
handler, a condition, one no worker has), which workers are alive, and whether they send
task events at all."""

from __future__ import annotations

from typing import Any

from state_tasks.console.workers import EVENTS_QUIET_S, WORKER_ALIVE_S, WorkerWatch


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def watch_with(clock: Clock) -> WorkerWatch:
    return WorkerWatch(None, redact=lambda text: text.replace("pw", "***"), clock=clock)


def task(kind: str, uuid: str, **fields: Any) -> dict[str, Any]:
    return {"type": f"task-{kind}", "uuid": uuid, "hostname": "celery@a", **fields}


def test_runs_and_failures_are_counted_per_task_name_with_the_last_error() -> None:
    clock = Clock()
    watch = watch_with(clock)
    for uuid in ("1", "2", "3"):
        watch.handle(task("sent", uuid, name="test::onAny"))
    watch.handle(task("received", "1", name="test::onAny"))
    watch.handle(task("succeeded", "1", timestamp=clock.now - 5))
    watch.handle(task("succeeded", "2", timestamp=clock.now - 4))
    watch.handle(
        task("failed", "3", exception="RuntimeError('redis://:pw@h down')", timestamp=clock.now - 3)
    )
    watch.handle(task("succeeded", "unknown-id"))  # a task it never saw sent: not counted
    runs = watch.runs(["test::onAny", "test::never"])
    assert runs["test::onAny"] == {
        "runs": 3,
        "succeeded": 2,
        "failed": 1,
        "last_run_at": clock.now - 3,
        "last_error": "RuntimeError('redis://:***@h down')",
        "last_error_at": clock.now - 3,
    }
    assert runs["test::never"]["runs"] == 0


def test_a_task_no_worker_has_is_counted_from_its_not_registered_failure() -> None:
    watch = watch_with(Clock())
    # The worker that got it sends task-failed without a task-received
    watch.handle(task("failed", "9", exception="NotRegistered('test::nope')"))
    runs = watch.runs(["test::nope"])["test::nope"]
    assert (runs["failed"], runs["last_error"]) == (1, "NotRegistered('test::nope')")


def test_the_state_functions_tasks_are_not_tracked() -> None:
    watch = watch_with(Clock())
    watch.handle(task("received", "s", name="state::changes"))
    watch.handle(task("succeeded", "s"))
    assert watch.runs(["state::changes"])["state::changes"]["runs"] == 0


def test_task_events_are_on_off_or_unknown_as_the_workers_send_them() -> None:
    clock = Clock()
    watch = watch_with(clock)
    assert watch.status()["task_events"] == "unknown"  # not receiving
    watch._connected_at = clock.now  # connected (the receiver thread sets it)
    assert watch.status()["task_events"] == "no_workers"
    watch.handle({"type": "worker-heartbeat", "hostname": "celery@a"})
    assert watch.status()["task_events"] == "waiting"
    assert watch.alive_workers() == ["celery@a"]
    # heartbeats, and no task event for longer than the console's own reads take
    clock.now += EVENTS_QUIET_S + 1
    watch.handle({"type": "worker-heartbeat", "hostname": "celery@a"})
    status = watch.status()
    assert (status["task_events"], status["workers"]) == ("off", ["celery@a"])
    watch.handle(task("received", "x", name="state::changes"))
    assert watch.status()["task_events"] == "on"
    assert watch.status()["sending"] == ["celery@a"]
    # a worker without heartbeats for a while is gone
    clock.now += WORKER_ALIVE_S + 1
    assert watch.alive_workers() == [] and watch.status()["task_events"] == "no_workers"
    watch.handle({"type": "worker-heartbeat", "hostname": "celery@b"})
    watch.handle({"type": "worker-offline", "hostname": "celery@b"})
    assert watch.alive_workers() == []
