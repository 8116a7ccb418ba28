"""The error family of state_tasks.

Every failure a caller can see is a :class:`StateError` with a machine-readable
``code`` and a message a person can act on. The classes survive Celery's JSON
result backend: the worker stores ``exc_module``/``exc_type``/``exc_message``
and the caller's ``AsyncResult.get()`` rebuilds the same class with the same
message, code and details, because ``args`` is exactly ``(message, code, details)``
(``details`` is ``None`` or a JSON object, so the JSON backend stores it as it is).
"""

from __future__ import annotations

from typing import Any


class StateError(Exception):
    """Root of every error state_tasks raises on purpose.

    ``code`` is one of ``VALIDATION_ERROR``, ``UPDATE_OP_ERROR``,
    ``VALUE_TOO_LARGE``, ``VERSION_CONFLICT``, ``ADAPTER_ERROR`` (the state functions) or
    ``CONFIG_ERROR`` (start-up).

    ``details`` is ``None`` or a JSON-safe dict of machine-readable facts; an
    :class:`UpdateOpError` raised by an update op carries
    ``{"op_index": i, "reason": "increment.not_number"}``.
    """

    default_code = "STATE_ERROR"

    def __init__(
        self, message: str, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        code = code or self.default_code
        if not message:
            message = f"{code} (no detail given)"
        super().__init__(message, code, details)
        self.message = message
        self.code = code
        self.details = details

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.code, self.details))


class ValidationError(StateError):
    """A scope, key, value or payload that the state functions do not accept."""

    default_code = "VALIDATION_ERROR"


class UpdateOpError(StateError):
    """An update op that cannot be applied; nothing was written.

    Raised by the ops, ``details`` is ``{"op_index": i, "reason": r}``: the index of the
    failing op in ``ops`` (``None`` when ``ops`` itself is not an array) and a stable reason
    name such as ``increment.not_number`` (the engine's names, see docs/update-ops.md).
    """

    default_code = "UPDATE_OP_ERROR"


class ValueTooLarge(StateError):
    """A value whose JSON form exceeds the adapter's ``max_value_bytes``."""

    default_code = "VALUE_TOO_LARGE"


class VersionConflict(StateError):
    """``if_version`` did not match the key's current version; nothing was written.

    ``details`` is ``{"expected": n, "current": m}`` (``0``: the key does not exist), plus
    ``operation_index`` in a batch.
    """

    default_code = "VERSION_CONFLICT"


def version_conflict(
    scope: str, key: str, expected: int, current: int, what: str = "the call"
) -> VersionConflict:
    """The :class:`VersionConflict` every adapter raises, naming both versions."""
    now = "the key does not exist (version 0)" if current == 0 else f"it is at version {current}"
    wanted = "the key to be absent (version 0)" if expected == 0 else f"version {expected}"
    return VersionConflict(
        f"{what} expected {wanted} of key {key!r} in scope {scope!r}, but {now}; nothing was "
        "written (read it again with with_version: true and retry with its version)",
        None,
        {"expected": expected, "current": current},
    )


class AdapterError(StateError):
    """The storage behind the adapter failed or could not be reached."""

    default_code = "ADAPTER_ERROR"


class AdapterUnavailable(AdapterError):
    """The storage could not be reached (connection refused, lost or timed out).

    Its code is ``ADAPTER_ERROR`` like any adapter failure; the state tasks retry it
    with backoff before giving up, since the storage may come back.
    """


class ConfigError(StateError):
    """A module config (``state.yaml``) that cannot be used; raised at start-up."""

    default_code = "CONFIG_ERROR"


class CallTimeout(StateError):
    """A function called and waited for did not answer within its timeout."""

    default_code = "TIMEOUT"
