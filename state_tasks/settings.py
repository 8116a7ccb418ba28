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
=========================  =====================================================
"""

from __future__ import annotations

import os

from state_tasks.core.urls import is_embedded_broker

_redis_url = os.environ.get("REDIS_URL") or None

#: Where the embedded broker and result files live when no server is configured.
DATA_DIR = os.path.abspath(os.environ.get("STATE_TASKS_DATA_DIR", "./data"))

broker_url = os.environ.get("CELERY_BROKER_URL") or _redis_url or "statefs://localhost/"
result_backend = (
    os.environ.get("CELERY_RESULT_BACKEND")
    or _redis_url
    or "file://" + os.path.join(DATA_DIR, "results")
)

if is_embedded_broker(broker_url):
    # kombu's filesystem transport, kept in order (state_tasks.embedded_broker).
    # One folder holds the queue files, written and read by every process in the
    # same working directory; polling every 20 ms keeps a round trip well under
    # a second while costing an idle worker almost nothing.
    import state_tasks.embedded_broker  # noqa: F401  (registers the statefs:// scheme)

    broker_transport_options = {
        "data_folder_in": os.path.join(DATA_DIR, "broker", "queue"),
        "data_folder_out": os.path.join(DATA_DIR, "broker", "queue"),
        "control_folder": os.path.join(DATA_DIR, "broker", "control"),
        "polling_interval": 0.02,
        "store_processed": False,
    }

# JSON only, in both directions: a pickle message is refused, never executed.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# Reliability: a task is acknowledged only after it ran, and a task whose worker
# died mid-way goes back to the queue instead of being lost. One message is
# reserved per process at a time, so a crash strands at most that one.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
broker_connection_retry_on_startup = True

# Flower and `celery events` see every state task, condition and handler.
worker_send_task_events = True
task_send_sent_event = True

# With a Redis broker, a task taken by a worker that then vanished (not just a lost pool
# child, which Celery requeues at once) is handed out again after this many seconds. It
# must be longer than the longest task, including its retries with backoff (at most
# about 15 s for the state tasks), or a slow task would be delivered twice.
if broker_url.startswith(("redis://", "rediss://")):
    broker_transport_options = {
        "visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT") or 3600)
    }

result_expires = 24 * 3600

# print() in a handler goes to the worker's own output as whole lines, instead of
# being logged as a WARNING one fragment at a time.
worker_redirect_stdouts = False


def _default_pool() -> str:
    """``threads`` when the configured adapter keeps its data in one process."""
    try:
        from state_tasks.core.config import load_config

        return "prefork" if not load_config().process_local else "threads"
    except Exception:  # a bad state.yaml is reported by the worker at start-up
        return "threads"


worker_pool = os.environ.get("CELERY_WORKER_POOL") or _default_pool()

# A KvStore worker runs one task at a time by default, so the calls of one client
# are applied in the order they were sent (a void set, then a get, sees the set).
# Raise it (--concurrency) for slow, I/O-bound handlers on the same worker.
worker_concurrency = int(os.environ.get("CELERY_WORKER_CONCURRENCY") or 0) or (
    1 if worker_pool == "threads" else None
)
