"""The Celery side of high availability: a broker and results behind Sentinel, quorum queues.

Read from the environment by :mod:`state_tasks.settings` (so every worker and every client
built by :func:`state_tasks.create_app` gets them); the same Celery settings can be set in
the ``CELERY_CONFIG_MODULE`` instead.

=================================  ===================================================
variable                           meaning
=================================  ===================================================
``STATE_TASKS_SENTINEL_MASTER``    the master's name, for a ``sentinel://`` broker,
                                   result backend or ``redis_url`` (kombu's
                                   ``master_name``); required with any of them
``STATE_TASKS_SENTINEL_PASSWORD``  the sentinels' own password, if they need one
``STATE_TASKS_QUEUE_TYPE``         ``classic`` (default) or ``quorum``: the type of
                                   the queues the app declares on RabbitMQ
=================================  ===================================================

This module imports no Celery.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from state_tasks.core.errors import ConfigError
from state_tasks.core.sentinel import (
    SENTINEL_MASTER_VARIABLE,
    SENTINEL_PASSWORD_VARIABLE,
    is_sentinel_url,
)
from state_tasks.core.urls import redact_url

QUEUE_TYPE_VARIABLE = "STATE_TASKS_QUEUE_TYPE"
QUEUE_TYPES = ("classic", "quorum")
#: The URL schemes of a RabbitMQ broker (kombu's AMQP transports).
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


def is_amqp_url(url: str) -> bool:
    """True for a RabbitMQ broker URL, the only broker with quorum queues."""
    return url.startswith(AMQP_SCHEMES)


def sentinel_transport_options(url: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """kombu's and Celery's Sentinel options for a ``sentinel://`` URL, else ``{}``.

    :raises ConfigError: a ``sentinel://`` URL without ``STATE_TASKS_SENTINEL_MASTER``.
    """
    if not is_sentinel_url(url):
        return {}
    master_name = environ.get(SENTINEL_MASTER_VARIABLE)
    if not master_name:
        raise ConfigError(
            f"{redact_url(url)!r} names sentinels: set {SENTINEL_MASTER_VARIABLE} to the name "
            "they watch the master under (e.g. mymaster)"
        )
    options: dict[str, Any] = {"master_name": master_name}
    password = environ.get(SENTINEL_PASSWORD_VARIABLE)
    if password:
        options["sentinel_kwargs"] = {"password": password}
    return options


def queue_type_settings(broker_url: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """Celery's settings for ``STATE_TASKS_QUEUE_TYPE=quorum`` (RabbitMQ), else ``{}``.

    A quorum queue is replicated over the RabbitMQ cluster's nodes (Raft): a message that
    was confirmed survives the loss of a minority of them. What Celery needs with them:

    - ``task_default_queue_type`` and ``task_create_missing_queue_type``: every queue the
      app declares for tasks (``celery``, and those named by ``task_routes``) is a quorum
      queue.
    - ``task_default_exchange_type = "topic"``: quorum queues have no per-message delay, so
      Celery 5.5+ sends a task with a countdown (the state tasks' retries) through its
      *native delayed delivery* exchanges (quorum queues too), which need a topic or fanout
      exchange; on a direct one the worker would hold the task in memory instead.
    - Global QoS is not supported by quorum queues: Celery's ``worker_detect_quorum_queues``
      (on by default) turns it off.

    :raises ConfigError: an unknown type, or ``quorum`` with a broker that is not RabbitMQ.
    """
    queue_type = environ.get(QUEUE_TYPE_VARIABLE) or "classic"
    if queue_type not in QUEUE_TYPES:
        raise ConfigError(f"{QUEUE_TYPE_VARIABLE}={queue_type!r}: expected 'classic' or 'quorum'")
    if queue_type == "classic":
        return {}
    if not is_amqp_url(broker_url):
        raise ConfigError(
            f"{QUEUE_TYPE_VARIABLE}=quorum needs a RabbitMQ broker (amqp://...), "
            f"not {redact_url(broker_url)!r}"
        )
    return {
        "task_default_queue_type": "quorum",
        "task_create_missing_queue_type": "quorum",
        "task_default_exchange_type": "topic",
        "task_create_missing_queue_exchange_type": "topic",
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
    }
