"""Signed task messages: with signing on, a worker runs a signed ``state::set`` and refuses
an unsigned one, a tampered one and one signed by a certificate it does not trust."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import HANDLERS, REPO, Client, RedisServer, Worker, own_db, wait_until

from state_tasks.contrib.servers import self_signed_certificate

pytestmark = [pytest.mark.integration, pytest.mark.own_broker]

#: A client process: signs with the key and certificate in its environment. ``tamper``
#: changes the signed body after signing (the signature no longer matches).
CLIENT = r"""
import base64, json, sys
from state_tasks import app, iii

mode, function_id, payload = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if mode == "tamper":
    from kombu.serialization import codec, registry

    assert app.conf.task_serializer == "auth"  # (configures the app: registers auth)
    content_type, encoding, sign = registry._encoders["auth"]

    def tampered(data):
        raw = base64.b64decode(sign(data)).replace(b'"good"', b'"evil"')
        return base64.b64encode(raw).decode()

    registry._encoders["auth"] = codec(content_type, encoding, tampered)
if mode.startswith("swap:"):
    # After signing's own hook has bound the headers into the body: change one header (what
    # an attacker who captured the signed message would resend)
    from celery import signals

    header, _, value = mode[len("swap:"):].partition("=")

    @signals.before_task_publish.connect(weak=False)
    def swap(headers=None, **_):
        headers[header] = value
if mode == "unbound":
    # A sender that signs without state_tasks' hook (plain Celery): no signed headers
    from celery import signals

    @signals.before_task_publish.connect(weak=False)
    def unbind(body=None, **_):
        body[2].pop("state_tasks_signed_headers")
if mode == "register":
    iii.register_trigger(payload)
    print(json.dumps("registered"))
elif mode == "wait":
    print(json.dumps(app.send_task(function_id, kwargs=payload).get(timeout=20)))
else:
    app.send_task(function_id, kwargs=payload)
    print(json.dumps("sent"))
"""


class Identities:
    def __init__(self, folder: Path) -> None:
        self.store = folder / "trusted"
        # The worker and the service sign with their own keys; both are trusted.
        self.worker = self_signed_certificate(self.store, "worker")
        self.service = self_signed_certificate(self.store, "service")
        self.intruder = self_signed_certificate(folder / "untrusted", "intruder")
        # The store holds certificates only.
        for key in self.store.glob("*.key"):
            key.rename(folder / key.name)
        self.worker = (self.worker[0], folder / "worker.key")
        self.service = (self.service[0], folder / "service.key")

    def env(self, identity: tuple[Path, Path]) -> dict[str, str]:
        return {
            "STATE_TASKS_SIGNING_CERT": str(identity[0]),
            "STATE_TASKS_SIGNING_KEY": str(identity[1]),
            "STATE_TASKS_SIGNING_CERT_STORE": str(self.store),
        }


def run_client(
    broker: str, identity_env: dict[str, str], mode: str, function_id: str, payload: Any
) -> Any:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "STATE_"))},
        "CELERY_BROKER_URL": broker,
        "CELERY_RESULT_BACKEND": broker,
        "PYTHONPATH": str(REPO),
        **identity_env,
    }
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, mode, function_id, json.dumps(payload)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_signing_worker_runs_signed_tasks_and_refuses_the_others(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given a worker with signing on, trusting the worker's and the service's certificates
    ids = Identities(tmp_path / "ids")
    broker = redis_server.url(own_db())
    record_url = redis_server.url(own_db())
    record = redis.Redis.from_url(record_url)
    record.flushdb()
    worker = Worker(
        tmp_path / "w",
        {
            "CELERY_BROKER_URL": broker,
            "CELERY_RESULT_BACKEND": broker,
            "RECORD_REDIS_URL": record_url,
            **ids.env(ids.worker),
        },
        includes=("trigger_handlers",),
        pythonpath=[HANDLERS],
    ).start()
    service = ids.env(ids.service)
    try:
        trigger = {"type": "state", "function_id": "test::onAny", "config": {"scope": "signed"}}
        assert run_client(broker, service, "register", "", trigger) == "registered"
        # When the service sends a signed state::set
        result = run_client(
            broker, service, "wait", "state::set", {"scope": "signed", "key": "k", "value": 1}
        )
        # Then it runs, and its trigger's handler (a task the worker signed) runs too
        assert (result["old_value"], result["new_value"]) == (None, 1)
        wait_until(lambda: record.llen("record:any") == 1, 20, "the handler")

        # When an unsigned JSON message, a tampered signed one and one signed by an
        # untrusted certificate arrive
        plain = Client(broker, broker)
        try:
            plain.app.send_task(
                "state::set", kwargs={"scope": "signed", "key": "unsigned", "value": "good"}
            )
        finally:
            plain.close()
        set_payload = {"scope": "signed", "key": "tampered", "value": "good"}
        run_client(broker, service, "tamper", "state::set", set_payload)
        intruder_payload = {"scope": "signed", "key": "intruder", "value": "good"}
        run_client(broker, ids.env(ids.intruder), "send", "state::set", intruder_payload)

        # Then each is refused, with the refusal in the worker's log
        def refusals() -> list[str]:
            marks = ("Received invalid task message", "Can't decode message body")
            return [
                line for line in worker.log().splitlines() if line.split("] ")[-1].startswith(marks)
            ]

        wait_until(lambda: len(refusals()) == 3, 20, f"three refusals:\n{worker.tail()}")
        unsigned, tampered, intruder = refusals()
        assert "Refusing to deserialize untrusted content of type json" in unsigned
        # (Celery 5.x words a bad signature as a TypeError from its own error handling;
        # the message is refused all the same.)
        assert "Unable to deserialize" in tampered and "'task': 'state::set'" in tampered
        assert "Unknown certificate" in intruder and "intruder " in intruder
        # And nothing was stored, nothing fired, and the worker still serves signed calls
        for key in ("unsigned", "tampered", "intruder"):
            assert (
                run_client(broker, service, "wait", "state::get", {"scope": "signed", "key": key})
                is None
            )
        assert run_client(broker, service, "wait", "state::list", {"scope": "signed"}) == [1]
        assert record.llen("record:any") == 1
        assert worker.process is not None and worker.process.poll() is None
    finally:
        worker.stop()


def test_a_signed_message_whose_task_header_was_changed_is_refused(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given a signing worker, a key, and a trigger recording every change of its scope
    ids = Identities(tmp_path / "ids")
    broker = redis_server.url(own_db())
    record_url = redis_server.url(own_db())
    record = redis.Redis.from_url(record_url)
    record.flushdb()
    worker = Worker(
        tmp_path / "w",
        {
            "CELERY_BROKER_URL": broker,
            "CELERY_RESULT_BACKEND": broker,
            "RECORD_REDIS_URL": record_url,
            **ids.env(ids.worker),
        },
        includes=("trigger_handlers",),
        pythonpath=[HANDLERS],
    ).start()
    service = ids.env(ids.service)
    key = {"scope": "bound", "key": "k"}
    try:
        trigger = {"type": "state", "function_id": "test::onAny", "config": {"scope": "bound"}}
        run_client(broker, service, "register", "", trigger)
        run_client(broker, service, "wait", "state::set", {**key, "value": "kept"})
        wait_until(lambda: record.llen("record:any") == 1, 20, "the handler")

        # When a signed state::get arrives with its task header changed to state::delete,
        # another with its id changed, and one signed by a sender that binds no headers
        run_client(broker, service, "swap:task=state::delete", "state::get", key)
        run_client(broker, service, "swap:id=another-id", "state::delete", key)
        run_client(broker, service, "unbound", "state::delete", key)

        # Then each is refused with one line naming the reason, and no traceback
        def refusals() -> list[str]:
            return [
                line
                for line in worker.log().splitlines()
                if "Received invalid task message: " in line and "refused a signed message" in line
            ]

        wait_until(lambda: len(refusals()) == 3, 20, f"three refusals:\n{worker.tail()}")
        task, task_id, unbound = refusals()
        assert "its 'task' header ('state::delete') is not the one its sender signed" in task
        assert "('state::get')" in task and "'task': 'state::delete'" in task
        assert "its 'id' header ('another-id')" in task_id
        assert "does not name the task it is delivered as" in unbound
        assert "Traceback" not in worker.log()
        # And the key is still there, no state:deleted fired, and signed calls still run
        assert run_client(broker, service, "wait", "state::get", key) == "kept"
        assert record.llen("record:any") == 1
        assert worker.process is not None and worker.process.poll() is None
    finally:
        worker.stop()
