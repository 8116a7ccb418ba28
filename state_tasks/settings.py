"""The Celery settings of state_tasks, read from the environment.

Loaded by :func:`state_tasks.celery_app.create_app` as the package's own module, so a
``celeryconfig.py`` in a user's project cannot replace it by accident; a user's
overrides go in the module named by ``CELERY_CONFIG_MODULE`` (see the top-level
``celeryconfig.py``), applied on top of these.

=========================  =====================================================
variable                   default
=========================  =====================================================
``CELERY_BROKER_URL``      ``REDIS_URL`` if set, else the embedded filesystem
                           broker under ``./data/broker``
``CELERY_RESULT_BACKEND``  ``REDIS_URL`` if set, else a file backend under
                           ``./data/results``
``REDIS_URL``              unset
``STATE_CONFIG``           ``./state.yaml`` if it exists, else built-in defaults
``CELERY_WORKER_POOL``     ``threads`` for the KvStore (its data lives in one
                           process), else ``prefork``
``CELERY_RESULT_EXPIRES``  seconds a state task's result is kept: ``3600``
``STATE_TASKS_CLEANUP_``   seconds between two sweeps of the embedded default's
``INTERVAL``               data folder by the worker: ``60``
``STATE_TASKS_SENTINEL_``  the master's name for a ``sentinel://`` broker,
``MASTER``                 results or state (and ``_PASSWORD``, the sentinels')
``STATE_TASKS_QUEUE_``     ``quorum``: RabbitMQ quorum queues (default
``TYPE``                   ``classic``)
=========================  =====================================================
"""

from __future__ import annotations

import os

from state_tasks.core.environment import positive_int_from_env, visibility_timeout_s
from state_tasks.core.urls import check_url, is_embedded_broker
from state_tasks.embedded_broker import result_url
from state_tasks.high_availability import queue_type_settings, sentinel_transport_options
from state_tasks.security import (
    backend_ssl_options,
    broker_ssl_options,
    refuse_tls_on_plain_urls,
    signing_settings,
)

_redis_url = os.environ.get("REDIS_URL") or None

#: Where the embedded broker and result files live when no server is configured.
DATA_DIR = os.path.abspath(os.environ.get("STATE_TASKS_DATA_DIR", "./data"))

broker_url = os.environ.get("CELERY_BROKER_URL") or _redis_url or "statefs://localhost/"
result_backend = (
    os.environ.get("CELERY_RESULT_BACKEND")
    or _redis_url
    or result_url(os.path.join(DATA_DIR, "results"))
)

# A URL that drivers would misread stops here, with one line (never a part of its password).
check_url("CELERY_BROKER_URL", broker_url)
check_url("CELERY_RESULT_BACKEND", result_backend, password_parameter=True)

if is_embedded_broker(broker_url):
    # kombu's filesystem transport, kept in order (state_tasks.embedded_broker).
    # One folder holds the queue files, written and read by every process in the
    # same working directory; it is polled every 20 ms.
    from state_tasks.embedded_broker import transport_options

    broker_transport_options = transport_options(DATA_DIR)

# JSON only, in both directions: a pickle message is refused, never executed.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
# Signed task messages when STATE_TASKS_SIGNING_KEY/_CERT/_CERT_STORE are set: the auth
# serializer (JSON inside) replaces JSON for tasks, and unsigned tasks are refused.
globals().update(signing_settings(os.environ))

# TLS: a rediss:// or amqps:// broker and a rediss:// result backend verify the server's
# certificate (CELERY_SSL_CA_CERTS, else the system's CAs), with a client certificate if
# CELERY_SSL_CERTFILE/CELERY_SSL_KEYFILE are set (state_tasks.security).
refuse_tls_on_plain_urls(broker_url, result_backend, os.environ)
broker_use_ssl = broker_ssl_options(broker_url, os.environ)
redis_backend_use_ssl = backend_ssl_options(result_backend, os.environ)

# One log line for a refused message, and signed headers checked (state_tasks.worker).
worker_consumer = "state_tasks.worker:StateTasksConsumer"

# Reliability: a task is acknowledged only after it ran, and a task whose worker
# died mid-way goes back to the queue instead of being lost. One message is
# reserved per process at a time, so a crash strands at most that one.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
broker_connection_retry_on_startup = True

#: Seconds a connection attempt to the broker (kombu's ``broker_connection_timeout``) or a
#: Redis result backend may take, its TLS handshake included (state_tasks.core.connect_errors).
DEFAULT_CONNECT_TIMEOUT_S = 5.0
broker_connection_timeout = DEFAULT_CONNECT_TIMEOUT_S
redis_socket_connect_timeout = DEFAULT_CONNECT_TIMEOUT_S

# Flower and `celery events` see every state task, condition and handler.
worker_send_task_events = True
task_send_sent_event = True

# With a Redis broker, a task taken by a worker that then vanished (not just a lost pool
# child, which Celery requeues at once) is handed out again after this many seconds. It
# must be longer than the longest task, including its retries with backoff (at most
# about 15 s for the state tasks), or a slow task would be delivered twice.
if broker_url.startswith(("redis://", "rediss://", "sentinel://")):
    broker_transport_options = {
        "visibility_timeout": visibility_timeout_s(),
        # A connection attempt (its TLS handshake included) ends within this.
        "socket_connect_timeout": DEFAULT_CONNECT_TIMEOUT_S,
        **sentinel_transport_options(broker_url, os.environ),
    }

# Behind Sentinel (state_tasks.high_availability): a sentinel://host:port;sentinel://...
# broker or result backend, with the master's name in STATE_TASKS_SENTINEL_MASTER.
if sentinel_transport_options(result_backend, os.environ):
    result_backend_transport_options = sentinel_transport_options(result_backend, os.environ)
# RabbitMQ quorum queues with STATE_TASKS_QUEUE_TYPE=quorum (replicated; see the module).
globals().update(queue_type_settings(broker_url, os.environ))

#: How long a state task's result is kept, by default: one hour. A caller that waits for its
#: result reads it within its timeout (30 s by default), and ``iii.trigger`` removes it once
#: read; what is left is the result nobody read (a ``.delay()`` whose caller never calls
#: ``.get()``), and it holds the old *and* the new value, up to 2 MiB. Kept a day, as
#: Celery's default does, that is a day of such calls in the result backend; an hour
#: still lets a caller come back for an ``AsyncResult`` after a hiccup. Handlers,
#: conditions, gates and ``void`` calls store no result at all.
DEFAULT_RESULT_EXPIRES_S = 3600
#: How often a worker removes expired result files and broker leftovers from the data
#: folder of the embedded default (``state_tasks.worker``), by default.
DEFAULT_CLEANUP_INTERVAL_S = 60


result_expires = positive_int_from_env("CELERY_RESULT_EXPIRES", DEFAULT_RESULT_EXPIRES_S)
#: Read by the worker's cleanup thread (not a Celery setting).
state_tasks_cleanup_interval = positive_int_from_env(
    "STATE_TASKS_CLEANUP_INTERVAL", DEFAULT_CLEANUP_INTERVAL_S
)

# print() in a handler goes to the worker's own output as whole lines, instead of
# being logged as a WARNING one fragment at a time.
worker_redirect_stdouts = False


def _default_pool() -> str:
    """``threads`` when the configured adapter keeps its data in one process."""
    try:
        from state_tasks.config import load_config

        return "prefork" if not load_config().process_local else "threads"
    except Exception:  # a bad state.yaml is reported by the worker at start-up
        return "threads"


worker_pool = os.environ.get("CELERY_WORKER_POOL") or _default_pool()

# A KvStore worker runs one task at a time by default, so the calls of one client
# are applied in the order they were sent (a void set, then a get, sees the set).
# Raise it (--concurrency) for slow, I/O-bound handlers on the same worker.
worker_concurrency = positive_int_from_env(
    "CELERY_WORKER_CONCURRENCY", 0, unit="processes or threads"
) or (1 if worker_pool == "threads" else None)
