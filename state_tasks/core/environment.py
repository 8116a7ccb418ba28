"""The environment variables state_tasks reads: one table, and how a number is read.

:data:`VARIABLES` is the list the documentation's table is checked against
(tests/unit/test_environment.py): a variable read anywhere in the package and missing
here, or listed here and missing from the docs, fails that test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from state_tasks.core.errors import ConfigError

#: Celery's Redis transport hands a task taken by a worker that vanished to another worker
#: after this many seconds, unless ``CELERY_VISIBILITY_TIMEOUT`` says otherwise.
DEFAULT_VISIBILITY_TIMEOUT_S = 3600


@dataclass(frozen=True)
class Variable:
    """An environment variable: what it sets and its default, as the docs say them."""

    name: str
    meaning: str
    default: str


VARIABLES = (
    Variable(
        "CELERY_BROKER_URL",
        "broker",
        "`REDIS_URL` if set, else the embedded broker under `./data/broker`",
    ),
    Variable(
        "CELERY_RESULT_BACKEND",
        "result backend",
        "`REDIS_URL` if set, else files under `./data/results`",
    ),
    Variable("REDIS_URL", "default Redis for broker, backend and RedisAdapter", "unset"),
    Variable(
        "STATE_CONFIG",
        "path of the module config",
        "`./state.yaml` if it exists, else built-in defaults",
    ),
    Variable("STATE_TASKS_DATA_DIR", "folder of the embedded broker and results", "`./data`"),
    Variable("CELERY_WORKER_POOL", "worker pool", "`threads` for the KvStore, else `prefork`"),
    Variable(
        "CELERY_WORKER_CONCURRENCY",
        "worker concurrency",
        "`1` for the KvStore, else Celery's default (CPUs)",
    ),
    Variable(
        "CELERY_VISIBILITY_TIMEOUT",
        "Redis broker: seconds before a task taken by a vanished worker is handed out again",
        f"`{DEFAULT_VISIBILITY_TIMEOUT_S}`",
    ),
    Variable(
        "CELERY_RESULT_EXPIRES",
        "seconds a state task's result is kept when nobody reads it (see "
        "[What is kept](operations.md#what-is-kept-and-for-how-long))",
        "`3600`",
    ),
    Variable(
        "STATE_TASKS_CLEANUP_INTERVAL",
        "embedded default: seconds between two cleanups of the data folder by the worker",
        "`60`",
    ),
    Variable(
        "STATE_TASKS_STARTUP_TIMEOUT",
        "seconds a starting worker tries to reach its broker, result backend and state "
        "before it exits with the reason ([deadlines](security.md#deadlines))",
        "`30`",
    ),
    Variable(
        "STATE_TASKS_SENTINEL_MASTER",
        "the master's name for a `sentinel://` broker, result backend or `redis_url` "
        "(kombu's `master_name`)",
        "unset (required with them)",
    ),
    Variable(
        "STATE_TASKS_SENTINEL_PASSWORD", "the sentinels' own password, if they require one", "unset"
    ),
    Variable(
        "STATE_TASKS_QUEUE_TYPE",
        "`quorum`: RabbitMQ quorum queues "
        "([quorum queues](high-availability.md#the-broker-rabbitmq-quorum-queues))",
        "`classic`",
    ),
    Variable(
        "CELERY_CONFIG_MODULE",
        "a module of Celery settings applied over the package's own "
        "([your Celery overrides](#your-celery-overrides-celery_config_module))",
        "unset",
    ),
    Variable(
        "CELERY_SSL_CA_CERTS",
        "TLS with the broker and results: the CAs to trust, a PEM file ([TLS](security.md#tls))",
        "the system's",
    ),
    Variable("CELERY_SSL_CERTFILE", "TLS: a client certificate (PEM)", "unset"),
    Variable("CELERY_SSL_KEYFILE", "TLS: the client certificate's key (PEM)", "unset"),
    Variable(
        "CELERY_SSL_CERT_REQS",
        "TLS: `required`, `optional` or `none` (no checks)",
        "`required`",
    ),
    Variable(
        "STATE_TASKS_SIGNING_KEY",
        "sign every task message with this key ([signed task messages]"
        "(security.md#signed-task-messages))",
        "unset (no signing)",
    ),
    Variable("STATE_TASKS_SIGNING_CERT", "the certificate of the signing key", "unset"),
    Variable(
        "STATE_TASKS_SIGNING_CERT_STORE",
        "accept only messages signed by a certificate in this folder",
        "unset",
    ),
    Variable(
        "STATE_TASKS_CONSOLE_TOKEN",
        "the console's sign-in token ([console](console.md))",
        "unset (a random one is printed)",
    ),
)


def table() -> str:
    """:data:`VARIABLES` as the Markdown table of docs/configuration.md."""
    rows = ["| variable | meaning | default |", "|---|---|---|"]
    rows += [f"| `{v.name}` | {v.meaning} | {v.default} |" for v in VARIABLES]
    return "\n".join(rows) + "\n"


def positive_int_from_env(variable: str, default: int, unit: str = "seconds") -> int:
    """The positive whole number in ``$variable``, else ``default``; :class:`ConfigError`
    naming the variable for anything else (``0``, ``-1``, ``two``, ``1.5``)."""
    raw = os.environ.get(variable) or ""
    if not raw:
        return default
    try:
        number = int(raw)
    except ValueError:
        number = 0
    if number <= 0:
        raise ConfigError(f"{variable} must be a positive whole number of {unit}, got {raw!r}")
    return number


def visibility_timeout_s() -> int:
    """``CELERY_VISIBILITY_TIMEOUT`` in seconds, else :data:`DEFAULT_VISIBILITY_TIMEOUT_S`."""
    return positive_int_from_env("CELERY_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT_S)
