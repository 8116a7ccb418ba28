"""TLS on every link: a worker and a client on a redis-server that listens only with TLS
(for them) and asks for client certificates, as broker, results and state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import HANDLERS, OUR_VARIABLES, Client, own_db, redis_state_yaml

from state_tasks.adapters.redis import RedisAdapter
from state_tasks.broker_errors import UNREACHABLE_ERRORS, describe_unreachable
from state_tasks.contrib.servers import (
    RabbitTlsNode,
    RedisServer,
    TlsFiles,
    Worker,
    make_tls_files,
    wait_until,
)
from state_tasks.core.errors import AdapterError, ConfigError
from state_tasks.core.urls import redact_url
from state_tasks.security import backend_ssl_options, broker_ssl_options

pytestmark = [pytest.mark.integration, pytest.mark.own_broker]

PASSWORD = "tls-Secret-pw-91"
CLI = os.path.join(os.path.dirname(sys.executable), "state-tasks")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_redis(tls: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("tls-redis"), password=PASSWORD, tls=tls)
    yield server
    server.stop()


def client_files(tls: TlsFiles, ca: Path | None = None) -> dict[str, str]:
    return {
        "ssl_ca_certs": str(ca or tls.ca_cert),
        "ssl_certfile": str(tls.client_cert),
        "ssl_keyfile": str(tls.client_key),
    }


def celery_tls_env(tls: TlsFiles) -> dict[str, str]:
    return {
        "CELERY_SSL_CA_CERTS": str(tls.ca_cert),
        "CELERY_SSL_CERTFILE": str(tls.client_cert),
        "CELERY_SSL_KEYFILE": str(tls.client_key),
    }


def tls_client(url: str, env: dict[str, str]) -> Client:
    """A client with the TLS settings a service gets from the same environment."""
    return Client(
        url,
        url,
        broker_use_ssl=broker_ssl_options(url, env),
        redis_backend_use_ssl=backend_ssl_options(url, env),
    )


def record_url(server: RedisServer, tls: TlsFiles, db: int) -> str:
    """The handlers' record Redis, over TLS too (redis-py reads the files from the query)."""
    query = "&".join(f"{name}={path}" for name, path in client_files(tls).items())
    return f"{server.tls_url(db)}?{query}"


def test_a_worker_and_a_client_round_trip_with_triggers_over_tls(
    tls: TlsFiles, tls_redis: RedisServer, tmp_path: Path
) -> None:
    # Given a worker whose broker, results, state and handler records all use rediss://
    # with the test CA and a client certificate
    url = tls_redis.tls_url(1)
    config = tmp_path / "state.yaml"
    config.write_text(redis_state_yaml(tls_redis.tls_url(2), "tls", **client_files(tls)))
    env = celery_tls_env(tls)
    worker = Worker(
        tmp_path,
        {
            "CELERY_BROKER_URL": url,
            "CELERY_RESULT_BACKEND": url,
            "STATE_CONFIG": str(config),
            "RECORD_REDIS_URL": record_url(tls_redis, tls, 3),
            **env,
        },
        ("--concurrency", "1"),
        includes=("trigger_handlers",),
        pythonpath=[HANDLERS],
    ).start()
    client = tls_client(url, env)
    admin = redis.Redis(port=tls_redis.port, password=PASSWORD, decode_responses=True)
    try:
        client.iii.register_trigger(
            {"type": "state", "function_id": "test::onAny", "config": {"scope": "tls-scope"}}
        )
        # When the client sets, updates and reads a value
        answer = client.call("state::set", scope="tls-scope", key="k", value={"n": 1})
        assert (answer["old_value"], answer["new_value"]) == (None, {"n": 1})
        client.call(
            "state::update", scope="tls-scope", key="k", ops=[{"increment": {"field": "n"}}]
        )
        assert client.call("state::get", scope="tls-scope", key="k") == {"n": 2}
        # Then the handler saw both changes
        admin.select(3)
        wait_until(lambda: admin.llen("record:any") >= 2, 20, "the handler to record two events")
        events = [json.loads(item) for item in admin.lrange("record:any", 0, -1)]
        assert [e["event_type"] for e in events] == ["state:created", "state:updated"]
        # And the state is in Redis, written through the TLS port
        admin.select(2)
        assert admin.hget("tls:s:{tls-scope}", "k") == '{"n":2}'
        # And no connection but this test's own admin one uses the plain port
        connections = admin.client_list()
        plain = [c for c in connections if c["laddr"].endswith(f":{tls_redis.port}")]
        assert len(plain) == 1, plain
        assert len(connections) > 3
    finally:
        client.close()
        worker.stop()


def test_a_state_certificate_that_does_not_verify_stops_the_worker_at_once(
    tls: TlsFiles, tls_redis: RedisServer, tmp_path: Path
) -> None:
    # Given a worker whose state adapter trusts another CA than the one that signed Redis's
    url = tls_redis.tls_url(4)
    config = tmp_path / "state.yaml"
    config.write_text(
        redis_state_yaml(tls_redis.tls_url(5), "bad", **client_files(tls, tls.other_ca_cert))
    )
    worker = Worker(
        tmp_path,
        {
            "CELERY_BROKER_URL": url,
            "CELERY_RESULT_BACKEND": url,
            "STATE_CONFIG": str(config),
            **celery_tls_env(tls),
        },
        ("--concurrency", "1"),
    )
    # When it starts
    started = time.monotonic()
    code, log = worker.run_to_exit()
    # Then it exits at once (a certificate that does not verify will not on a retry either),
    # never ready, with ADAPTER_ERROR's words naming the cause, without the password
    assert time.monotonic() - started < 15
    assert code != 0 and "ready." not in log
    assert (
        "state_tasks cannot start: [UNREACHABLE] cannot use the state: get (scope "
        "'state_tasks'): TLS with Redis at rediss://:***@127.0.0.1" in log
    ), log
    assert "certificate does not verify" in log and PASSWORD not in log


def test_the_adapter_alone_needs_the_right_ca_and_a_client_certificate(
    tls: TlsFiles, tls_redis: RedisServer
) -> None:
    good = RedisAdapter(redis_url=tls_redis.tls_url(6), key_prefix="t", **client_files(tls))
    assert good.set("s", "k", "1") is None and good.get("s", "k") == "1"
    good.close()

    wrong_ca = RedisAdapter(redis_url=tls_redis.tls_url(6), **client_files(tls, tls.other_ca_cert))
    with pytest.raises(AdapterError, match="certificate does not verify"):
        wrong_ca.get("s", "k")

    # Without a client certificate the server hangs up during the handshake: an
    # ADAPTER_ERROR after the connect timeout at most, never a hang.
    no_cert = RedisAdapter(
        redis_url=tls_redis.tls_url(6), ssl_ca_certs=str(tls.ca_cert), socket_timeout_s=1
    )
    started = time.monotonic()
    with pytest.raises(AdapterError):
        no_cert.get("s", "k")
    assert time.monotonic() - started < 3


def test_tls_options_on_a_plain_url_are_refused() -> None:
    # A deployment that believes it is encrypted must not run in clear text.
    with pytest.raises(ConfigError, match=r"need a rediss:// \(or rediss\+cluster://\) URL"):
        RedisAdapter(redis_url="redis://127.0.0.1:1/0", ssl_ca_certs="/ca.pem")


@pytest.mark.parametrize(
    ("variable", "broker", "results", "shown"),
    [
        ("CELERY_SSL_CA_CERTS", "redis://:pw-Plain-1@127.0.0.1:1/0", None, "broker"),
        ("CELERY_SSL_CERT_REQS", "amqp://u:pw-Plain-1@127.0.0.1:1//", None, "broker"),
        ("CELERY_SSL_CERTFILE", "sentinel://:pw-Plain-1@127.0.0.1:1", None, "broker"),
        ("CELERY_SSL_KEYFILE", "statefs://localhost/", None, "broker"),
        (
            "CELERY_SSL_CA_CERTS",
            "rediss://:pw-Plain-1@127.0.0.1:1/0",
            "redis://:pw-Plain-1@127.0.0.1:1/1",
            "result backend",
        ),
    ],
)
def test_tls_variables_with_a_plain_url_stop_the_cli_and_the_worker(
    variable: str, broker: str, results: str | None, shown: str, tmp_path: Path
) -> None:
    # Given a TLS variable, and a broker (or results) URL that would run in clear text
    env = {
        "CELERY_BROKER_URL": broker,
        "CELERY_RESULT_BACKEND": results or broker,
        "STATE_TASKS_SENTINEL_MASTER": "mymaster",
        variable: str(tmp_path / "file.pem"),
    }
    if variable == "CELERY_SSL_CERT_REQS":
        env[variable] = "none"
    url = redact_url(results or broker)
    expected = f"{variable} is set, but the {shown} URL {url!r} is not TLS"
    # When the CLI calls, and a worker starts
    started = time.monotonic()
    done = subprocess.run(
        [CLI, "--timeout", "5", "get", "s", "k"],
        env=cli_env(env.pop("CELERY_BROKER_URL"), env.pop("CELERY_RESULT_BACKEND"), env),
        cwd=tmp_path,  # (the embedded broker's folders are made in the current one)
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then each refuses at once, naming the variable and the URL, its password masked
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"state-tasks: CONFIG_ERROR: {expected}"), done.stderr
    code, log = Worker(
        tmp_path,
        {"CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": results or broker, **env},
    ).run_to_exit(timeout_s=30)
    assert code != 0 and expected in log, log
    assert "pw-Plain-1" not in done.stderr + log
    assert time.monotonic() - started < 30


def test_celery_tls_settings_from_the_environment() -> None:
    import ssl

    env: dict[str, Any] = {"CELERY_SSL_CA_CERTS": "/ca.pem"}
    assert broker_ssl_options("redis://h/0", env) is None
    assert broker_ssl_options("rediss://h/0", {}) == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert broker_ssl_options("amqps://h//", env) == {
        "cert_reqs": ssl.CERT_REQUIRED,
        "ca_certs": "/ca.pem",
    }
    assert backend_ssl_options("rediss://h/0", env) == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": "/ca.pem",
    }
    with pytest.raises(ConfigError, match="CELERY_SSL_CERT_REQS"):
        broker_ssl_options("rediss://h/0", {"CELERY_SSL_CERT_REQS": "maybe"})


# amqps:// — RabbitMQ over TLS: a node of the test's own that has only a TLS listener and
# asks for client certificates (the session's RabbitMQ on 5672 is not touched).


@pytest.fixture(scope="module")
def tls_rabbit(tls: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitTlsNode]:
    # No skip: without rabbitmq-server this fails (./scripts/test installs it).
    node = RabbitTlsNode(tmp_path_factory.mktemp("tls-rabbit"), tls, require_client_cert=True)
    yield node
    node.stop()


def cli_env(broker: str, results: str, tls: dict[str, str]) -> dict[str, str]:
    ambient = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES}
    return ambient | {"CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": results, **tls}


def test_a_worker_and_a_client_round_trip_with_triggers_over_amqps(
    tls: TlsFiles,
    tls_rabbit: RabbitTlsNode,
    tls_redis: RedisServer,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    # Given a worker and a client on a RabbitMQ node that only speaks TLS, trusting the
    # test CA and showing a client certificate (docs/security.md's variables); results on
    # the TLS Redis (the variables apply to them too), the handler's records on the
    # session's plain Redis
    broker, results = tls_rabbit.url(), tls_redis.tls_url(5)
    records_url = redis_server.url(own_db())
    records = redis.Redis.from_url(records_url, decode_responses=True)
    env = celery_tls_env(tls)
    worker = Worker(
        tmp_path,
        {
            "CELERY_BROKER_URL": broker,
            "CELERY_RESULT_BACKEND": results,
            "RECORD_REDIS_URL": records_url,
            **env,
        },
        ("--concurrency", "1"),
        includes=("trigger_handlers",),
        pythonpath=[HANDLERS],
    ).start()
    client = Client(
        broker,
        results,
        broker_use_ssl=broker_ssl_options(broker, env),
        redis_backend_use_ssl=backend_ssl_options(results, env),
    )
    try:
        client.iii.register_trigger(
            {"type": "state", "function_id": "test::onAny", "config": {"scope": "amqps-scope"}}
        )
        # When the client sets, updates and reads a value
        answer = client.call("state::set", scope="amqps-scope", key="k", value={"n": 1})
        assert (answer["old_value"], answer["new_value"]) == (None, {"n": 1})
        client.call(
            "state::update", scope="amqps-scope", key="k", ops=[{"increment": {"field": "n"}}]
        )
        assert client.call("state::get", scope="amqps-scope", key="k") == {"n": 2}
        # Then the trigger fired for both changes
        wait_until(lambda: records.llen("record:any") >= 2, 20, "the handler to record two events")
        events = [json.loads(item) for item in records.lrange("record:any", 0, -1)]
        assert [e["event_type"] for e in events] == ["state:created", "state:updated"]
        # And the worker ran on the TLS listener (the node has no other), and every
        # connection to the node is TLS with the client certificate
        assert f"amqps://guest:**@127.0.0.1:{tls_rabbit.tls_port}//" in worker.log()
        connections = tls_rabbit.connections()
        assert len(connections) >= 2, connections  # the worker's and the client's
        assert {(c["ssl"], c["peer_cert_subject"]) for c in connections} == {("true", "CN=client")}
    finally:
        client.close()
        worker.stop()


def test_a_broker_certificate_that_does_not_verify_is_a_clear_error_at_once(
    tls: TlsFiles, tls_rabbit: RabbitTlsNode, tls_redis: RedisServer
) -> None:
    # Given the CLI trusting another CA than the one that signed the node's certificate
    results = tls_redis.tls_url(4)
    env = cli_env(tls_rabbit.url(), results, celery_tls_env(tls))
    env["CELERY_SSL_CA_CERTS"] = str(tls.other_ca_cert)
    # When it calls, with a long timeout
    started = time.monotonic()
    done = subprocess.run(
        [CLI, "--timeout", "30", "get", "s", "k"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it fails in seconds, not at the timeout, with one line naming TLS and the cause
    assert time.monotonic() - started < 10
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip() == (
        # (the client reaches the result backend first, to wait on it: it trusts the
        # same other CA)
        f"state-tasks: TLS with the result backend at rediss://:***@127.0.0.1:"
        f"{tls_redis.tls_port}/4 failed: the server's certificate does not verify "
        "(self-signed certificate in certificate chain)"
    )


def test_a_client_without_a_certificate_is_refused_with_a_clear_error(
    tls: TlsFiles, tls_rabbit: RabbitTlsNode, redis_server: RedisServer
) -> None:
    # Given a client that trusts the right CA but shows no certificate, to a node that
    # asks for one. Its URL names the host as "localhost": kombu's connection pools, which
    # Celery shares between the apps of a process, are keyed by the URL without the TLS
    # options, so with the first test's URL this app would reuse its client certificate.
    broker, results = tls_rabbit.url(host="localhost"), redis_server.url(own_db())
    env = {"CELERY_SSL_CA_CERTS": str(tls.ca_cert)}
    client = Client(broker, results, broker_use_ssl=broker_ssl_options(broker, env))
    try:
        # When it calls through the facade
        started = time.monotonic()
        with pytest.raises(UNREACHABLE_ERRORS) as info:
            client.iii.trigger({"function_id": "state::get", "payload": {"scope": "s", "key": "k"}})
        # Then it fails at once, and the line the CLI and the console show names TLS and
        # the refusal
        assert time.monotonic() - started < 5
        line = describe_unreachable(client.app, info.value)
        assert line.startswith(
            f"TLS with the broker at amqps://guest:***@localhost:{tls_rabbit.tls_port}// "
            f"(results: {results}) failed: "
        ), line
        assert line.endswith(
            "; check the certificate files; the server asks for a client certificate? (give "
            "the client's certificate and key)"
        ), line
        # (TLS 1.3: the server's "certificate required" alert, or its hang-up when the
        # client reads after the server closed)
        assert "alert certificate required" in line or "EOF occurred" in line, line
    finally:
        client.close()


# Deadlines: a wrong scheme, port, certificate or password fails within seconds, with a
# line naming the server and the likely mistake.

#: (name, the broker URL's scheme and port, the TLS variables, the results' password, the
#: expected words)
MISTAKES = [
    ("tls-on-plain-port", "rediss", "plain", "files", PASSWORD, "TLS to a port that does not"),
    ("plain-on-tls-port", "redis", "tls", None, PASSWORD, "plain text to a port that expects TLS"),
    ("no-client-certificate", "rediss", "tls", "ca", PASSWORD, "asks for a client certificate"),
    ("wrong-password", "redis", "plain", None, PASSWORD, "wrong password"),
]


def _mistake_url(server: RedisServer, scheme: str, port: str, password: str, db: int) -> str:
    number = server.tls_port if port == "tls" else server.port
    return f"{scheme}://:{password}@127.0.0.1:{number}/{db}"


def _tls_variables(tls: TlsFiles, which: str | None) -> dict[str, str]:
    if which == "files":
        return celery_tls_env(tls)
    return {"CELERY_SSL_CA_CERTS": str(tls.ca_cert)} if which == "ca" else {}


@pytest.mark.parametrize(
    ("name", "scheme", "port", "variables", "password", "expected"),
    [
        *MISTAKES,
        ("wrong-results-password", "redis", "plain", None, "wrong-pw", "wrong password"),
    ],
)
def test_a_wrong_scheme_port_certificate_or_password_fails_the_cli_within_seconds(
    tls: TlsFiles,
    tls_redis: RedisServer,
    name: str,
    scheme: str,
    port: str,
    variables: str | None,
    password: str,
    expected: str,
) -> None:
    broker_password = "wrong-pw" if name == "wrong-password" else PASSWORD
    broker = _mistake_url(tls_redis, scheme, port, broker_password, 6)
    results = (
        broker if password == PASSWORD else _mistake_url(tls_redis, "redis", port, password, 7)
    )
    started = time.monotonic()
    done = subprocess.run(
        [CLI, "--timeout", "5", "get", "s", "k"],
        env=cli_env(broker, results, _tls_variables(tls, variables)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    took_s = time.monotonic() - started
    server = "the result backend" if results != broker else "the broker"
    assert done.returncode == 3, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(
        (f"state-tasks: cannot reach {server}", f"state-tasks: TLS with {server}")
    ), done.stderr
    assert expected in done.stderr and PASSWORD not in done.stderr, done.stderr
    assert took_s <= 10, (took_s, done.stderr)


@pytest.mark.parametrize(("name", "scheme", "port", "variables", "password", "expected"), MISTAKES)
def test_a_wrong_scheme_port_certificate_or_password_fails_the_adapter_within_seconds(
    tls: TlsFiles,
    tls_redis: RedisServer,
    name: str,
    scheme: str,
    port: str,
    variables: str | None,
    password: str,
    expected: str,
) -> None:
    url = _mistake_url(
        tls_redis, scheme, port, "wrong-pw" if name == "wrong-password" else password, 8
    )
    files = {"files": client_files(tls), "ca": {"ssl_ca_certs": str(tls.ca_cert)}}.get(
        variables or "", {}
    )
    adapter = RedisAdapter(redis_url=url, **files)
    started = time.monotonic()
    with pytest.raises(AdapterError) as info:
        adapter.get("s", "k")
    took_s = time.monotonic() - started
    adapter.close()
    assert expected in info.value.message and PASSWORD not in info.value.message
    assert "Check that the server runs" not in info.value.message
    assert took_s <= 10, (took_s, info.value.message)


def test_a_worker_that_cannot_reach_its_broker_or_state_at_start_says_why_and_exits(
    tls: TlsFiles, tls_redis: RedisServer, tmp_path: Path
) -> None:
    # Given a worker whose broker is rediss:// on a plain port, and one whose state's
    # password is wrong (the broker is fine)
    tls_broker = _mistake_url(tls_redis, "rediss", "plain", PASSWORD, 9)
    good_broker = tls_redis.url(9)
    config = tmp_path / "state.yaml"
    config.write_text(redis_state_yaml(_mistake_url(tls_redis, "redis", "plain", "nope", 10), "d"))
    cases = [
        (
            {"CELERY_BROKER_URL": tls_broker, "CELERY_RESULT_BACKEND": tls_broker}
            | celery_tls_env(tls),
            f"cannot reach the broker at rediss://:***@127.0.0.1:{tls_redis.port}/9: no TLS "
            f"answer from 127.0.0.1:{tls_redis.port} within 5 s; TLS to a port that does not "
            "speak TLS?",
        ),
        (
            {
                "CELERY_BROKER_URL": good_broker,
                "CELERY_RESULT_BACKEND": good_broker,
                "STATE_CONFIG": str(config),
            },
            "cannot use the state: get (scope 'state_tasks'): Redis at "
            f"redis://:***@127.0.0.1:{tls_redis.port}/10 refused the connection: wrong password",
        ),
    ]
    for index, (env, expected) in enumerate(cases):
        # When it starts
        started = time.monotonic()
        code, log = Worker(tmp_path / f"w{index}", env).run_to_exit(timeout_s=60)
        # Then it exits non-zero within seconds, never "ready", with the reason
        assert code != 0 and expected in log, log
        assert "ready." not in log and PASSWORD not in log
        assert time.monotonic() - started <= 20
