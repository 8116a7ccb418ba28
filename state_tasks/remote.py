"""A Celery client for another deployment of state_tasks (what the Bridge talks through)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import pydantic
from amqp.exceptions import PreconditionFailed
from celery import Celery
from celery.app import backends
from celery.exceptions import TimeoutError as CeleryTimeoutError
from kombu.exceptions import OperationalError

from state_tasks.adapters.base import StateAdapter
from state_tasks.adapters.bridge import Bridge
from state_tasks.adapters.settings import AdapterSettings
from state_tasks.core.errors import AdapterError, StateError
from state_tasks.core.urls import redact_url
from state_tasks.high_availability import QUEUE_TYPE_VARIABLE, is_amqp_url, queue_type_settings

DEFAULT_BRIDGE_TIMEOUT_MS = 30000

#: How often a waiting call polls a polling result backend.
POLL_INTERVAL_S = 0.01
#: Remote task ids are derived from local operation ids in this namespace.
BRIDGE_NAMESPACE = uuid.UUID("5b0f3c1e-8d0a-4c4e-9a43-2f7d7a5e0b11")


class _IsolatedCelery(Celery):  # type: ignore[misc]
    """A Celery app whose broker and result backend come from its constructor only.

    Celery's settings let ``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND`` in the
    environment win over any configuration, which in a local worker would point the
    Bridge back at the local broker.
    """

    def __init__(self, main: str, *, broker_url: str, result_backend: str, **kwargs: Any) -> None:
        self._fixed_broker_url = broker_url
        self._fixed_result_backend = result_backend
        super().__init__(main, broker=broker_url, backend=result_backend, **kwargs)

    def connection_for_write(self, url: str | None = None, **kwargs: Any) -> Any:
        return super().connection_for_write(url or self._fixed_broker_url, **kwargs)

    def connection_for_read(self, url: str | None = None, **kwargs: Any) -> Any:
        return super().connection_for_read(url or self._fixed_broker_url, **kwargs)

    def _get_backend(self) -> Any:
        backend, url = backends.by_url(self._fixed_result_backend, self.loader)
        return backend(app=self, url=url)


class RemoteDeployment:
    """Runs state functions on a remote deployment through its own broker.

    Its Celery app is its own, created on first use, sharing no configuration with the
    local app. Every call is bounded by ``timeout_ms``: the message expires then, so a
    remote worker that comes back later does not apply a change its caller gave up on.

    ``queue_type`` is the type of the remote's queues on RabbitMQ (its
    ``STATE_TASKS_QUEUE_TYPE``): ``quorum`` gives this client the same Celery settings as
    the remote's workers, so that it declares the queue it sends to (and the exchange) as
    they do; RabbitMQ refuses a declaration that differs from the queue's.

    :raises ConfigError: an unknown ``queue_type``, or ``quorum`` on a broker that is not
        RabbitMQ.
    """

    def __init__(
        self,
        *,
        broker_url: str,
        result_backend: str,
        timeout_ms: int = DEFAULT_BRIDGE_TIMEOUT_MS,
        queue: str | None = None,
        queue_type: str = "classic",
    ) -> None:
        self.queue_settings = queue_type_settings(broker_url, {QUEUE_TYPE_VARIABLE: queue_type})
        self.broker_url = broker_url
        self.result_backend = result_backend
        self.timeout_s = timeout_ms / 1000
        self.queue = queue
        self.name = f"the remote at {redact_url(broker_url)}"
        self._app: Celery | None = None
        self._app_lock = threading.Lock()

    @property
    def app(self) -> Celery:
        if self._app is None:
            with self._app_lock:
                if self._app is None:
                    connect_timeout_s = max(0.5, min(self.timeout_s / 3, 4.0))
                    self._app = _IsolatedCelery(
                        "state_tasks_bridge",
                        broker_url=self.broker_url,
                        result_backend=self.result_backend,
                        set_as_current=False,
                        config_source={
                            "task_serializer": "json",
                            "result_serializer": "json",
                            "accept_content": ["json"],
                            "result_accept_content": ["json"],
                            "broker_connection_timeout": connect_timeout_s,
                            "broker_connection_retry": False,
                            "broker_connection_max_retries": 1,
                            "redis_socket_connect_timeout": connect_timeout_s,
                            "redis_socket_timeout": self.timeout_s + 1,
                            "result_backend_transport_options": {"retry_policy": {"timeout": 1.0}},
                            **self.queue_settings,
                        },
                    )
        return self._app

    def call(self, function_id: str, payload: Mapping[str, Any], op_id: str | None = None) -> Any:
        """Run one remote state function and return its result (or raise its StateError).

        ``op_id`` names the operation: the remote task gets an id derived from it, so the
        remote recognises a repeat of the same operation.
        """
        task_id = None if op_id is None else str(uuid.uuid5(BRIDGE_NAMESPACE, op_id))
        try:
            result = self.app.send_task(
                function_id,
                kwargs=dict(payload),
                task_id=task_id,
                queue=self.queue,
                expires=self.timeout_s,
                retry=True,
                retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
            )
            value = result.get(
                timeout=self.timeout_s, interval=POLL_INTERVAL_S, disable_sync_subtasks=False
            )
        except StateError:
            # The remote's answer was read: drop it, so that a retry of the same operation
            # (same derived task id) is answered afresh.
            result.forget()
            raise
        except CeleryTimeoutError as e:
            raise AdapterError(
                f"{function_id}: {self.name} did not answer within {self.timeout_s * 1000:.0f} ms "
                "(is a worker running there, on the queue the Bridge sends to?)"
            ) from e
        except PreconditionFailed as e:
            raise AdapterError(
                f"{function_id}: {self.name} refused the Bridge's queues: {e} (the Bridge's "
                "queue_type must be the remote's STATE_TASKS_QUEUE_TYPE, classic or quorum)"
            ) from None
        except (OperationalError, OSError, ConnectionError) as e:
            raise AdapterError(
                f"{function_id}: cannot reach {self.name}: {type(e).__name__}: "
                f"{str(e).replace(self.broker_url, redact_url(self.broker_url))}"
            ) from None  # the driver's own text may carry the password; shown redacted above
        result.forget()
        return value

    def close(self) -> None:
        if self._app is not None:
            self._app.close()


class BridgeSettings(AdapterSettings):
    """``modules::state::adapters::Bridge``: state kept by another deployment, reached
    through its broker (:class:`RemoteDeployment`) by the :class:`Bridge` adapter."""

    kind: ClassVar[str] = "Bridge"
    process_local: ClassVar[bool] = True  # its local triggers live in the process

    broker_url: str
    result_backend: str
    timeout_ms: int = pydantic.Field(DEFAULT_BRIDGE_TIMEOUT_MS, gt=0)
    queue: str | None = None
    # The type of the queues the remote deployment declares (its STATE_TASKS_QUEUE_TYPE):
    # RabbitMQ refuses a client that declares the remote's queues with another type.
    queue_type: Literal["classic", "quorum"] = "classic"

    @pydantic.field_validator("queue_type")
    @classmethod
    def _quorum_needs_rabbitmq(cls, value: str, info: pydantic.ValidationInfo) -> str:
        broker_url = info.data.get("broker_url")
        if value == "quorum" and isinstance(broker_url, str) and not is_amqp_url(broker_url):
            raise ValueError(
                "quorum queues need a RabbitMQ broker_url (amqp://...), "
                f"not {redact_url(broker_url)!r}"
            )
        return value

    def build(self) -> StateAdapter:
        remote = RemoteDeployment(
            broker_url=self.broker_url,
            result_backend=self.result_backend,
            timeout_ms=self.timeout_ms,
            queue=self.queue,
            queue_type=self.queue_type,
        )
        return Bridge(
            remote=remote.call,
            remote_name=remote.name,
            max_value_bytes=self.max_value_bytes,
            op_window_s=self.op_window_s,
            on_close=remote.close,
        )
