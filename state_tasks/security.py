"""The Celery side of the security options: TLS to the broker and results, signed messages.

Both are read from the environment by :mod:`state_tasks.settings` (so ``celery -A
state_tasks worker`` and every client built by :func:`state_tasks.create_app` get them),
and both can be set the Celery way instead, in the ``CELERY_CONFIG_MODULE``.

==================================  ==================================================
variable                            meaning
==================================  ==================================================
``CELERY_SSL_CA_CERTS``             PEM file of the CAs to trust (default: the
                                    system's) for a ``rediss://`` or ``amqps://``
                                    broker and a ``rediss://`` result backend
``CELERY_SSL_CERTFILE``,            a client certificate and its key (PEM), for a
``CELERY_SSL_KEYFILE``              server that asks for one
``CELERY_SSL_CERT_REQS``            ``required`` (default), ``optional`` or ``none``
``STATE_TASKS_SIGNING_KEY``,        sign every task message with this key and
``STATE_TASKS_SIGNING_CERT``        certificate (Celery's ``auth`` serializer), and
``STATE_TASKS_SIGNING_CERT_STORE``  accept only messages signed by a certificate in
                                    this folder (all three, or none)
==================================  ==================================================

Two guards are always on, for whatever reaches the broker: :func:`limit_json_depth` refuses
a JSON message nested deeper than :data:`DEFAULT_MAX_JSON_DEPTH` when it is decoded (deeper
ones crashed a prefork worker: its pool pickles the arguments for the child, and pickle
recursion killed the main process), and :class:`OneLineLogs` keeps control characters that
callers choose (a newline, an ANSI escape) out of the worker's log lines.

This module imports no Celery: :func:`setup_signing` is given the app.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from state_tasks.core.coordination import FAN_IN_HEADER
from state_tasks.core.errors import ConfigError
from state_tasks.core.ops import deeper_than
from state_tasks.core.urls import redact_url

TLS_VARIABLES = ("CELERY_SSL_CA_CERTS", "CELERY_SSL_CERTFILE", "CELERY_SSL_KEYFILE")
CERT_REQS_VARIABLE = "CELERY_SSL_CERT_REQS"
SIGNING_VARIABLES = (
    "STATE_TASKS_SIGNING_KEY",
    "STATE_TASKS_SIGNING_CERT",
    "STATE_TASKS_SIGNING_CERT_STORE",
)
#: The digest of message signatures (Celery's ``security_digest``).
DEFAULT_SIGNING_DIGEST = "sha256"
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def _cert_reqs(environ: Mapping[str, str]) -> ssl.VerifyMode:
    raw = environ.get(CERT_REQS_VARIABLE) or "required"
    if raw not in _CERT_REQS:
        raise ConfigError(
            f"{CERT_REQS_VARIABLE}={raw!r}: expected 'required', 'optional' or 'none'"
        )
    return _CERT_REQS[raw]


def broker_ssl_options(broker_url: str, environ: Mapping[str, str]) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` for a ``rediss://`` or ``amqps://`` broker, else ``None``.

    A TLS broker always verifies the server's certificate unless ``CELERY_SSL_CERT_REQS``
    says otherwise (kombu would refuse a ``rediss://`` URL without a choice).
    """
    ca, cert, key = (environ.get(name) or None for name in TLS_VARIABLES)
    if broker_url.startswith("rediss://"):
        return _redis_options(ca, cert, key, _cert_reqs(environ))
    if broker_url.startswith("amqps://"):
        options: dict[str, Any] = {"cert_reqs": _cert_reqs(environ)}
        for name, value in (("ca_certs", ca), ("certfile", cert), ("keyfile", key)):
            if value:
                options[name] = value
        return options
    return None


#: URL schemes that are TLS: the CELERY_SSL_* variables apply to them.
TLS_SCHEMES = ("rediss://", "amqps://")
#: Result backends the CELERY_SSL_* variables would apply to if their URL were TLS.
_REDIS_SCHEMES = ("redis://", "rediss://", "sentinel://", "redis+socket://", "unix://")


def refuse_tls_on_plain_urls(
    broker_url: str, result_backend: str, environ: Mapping[str, str]
) -> None:
    """Refuse TLS variables that would not apply: a deployment that believes it is encrypted
    must not run in clear text.

    :raises ConfigError: one of ``CELERY_SSL_*`` is set while the broker, or a Redis result
        backend, has a plain URL (``redis://``, ``amqp://``, ``sentinel://``, the embedded
        broker); the message names the variable and the URL, its password as ``***``.
    """
    given = [name for name in (*TLS_VARIABLES, CERT_REQS_VARIABLE) if environ.get(name)]
    if not given:
        return
    plain = [("broker", broker_url)] if not broker_url.startswith(TLS_SCHEMES) else []
    if result_backend.startswith(_REDIS_SCHEMES) and not result_backend.startswith(TLS_SCHEMES):
        plain.append(("result backend", result_backend))
    if plain:
        what, url = plain[0]
        raise ConfigError(
            f"{given[0]} is set, but the {what} URL {redact_url(url)!r} is not TLS: it would "
            "run in clear text. Use rediss:// or amqps:// for it (a Redis result backend "
            f"too), or unset {', '.join(given)}"
        )


def backend_ssl_options(result_backend: str, environ: Mapping[str, str]) -> dict[str, Any] | None:
    """Celery's ``redis_backend_use_ssl`` for a ``rediss://`` result backend, else ``None``."""
    if not result_backend.startswith("rediss://"):
        return None
    ca, cert, key = (environ.get(name) or None for name in TLS_VARIABLES)
    return _redis_options(ca, cert, key, _cert_reqs(environ))


def _redis_options(
    ca: str | None, cert: str | None, key: str | None, reqs: ssl.VerifyMode
) -> dict[str, Any]:
    options: dict[str, Any] = {"ssl_cert_reqs": reqs}
    for name, value in (("ssl_ca_certs", ca), ("ssl_certfile", cert), ("ssl_keyfile", key)):
        if value:
            options[name] = value
    return options


def signing_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """The Celery settings that turn message signing on, or ``{}`` when it is off."""
    given = {name: environ.get(name) or None for name in SIGNING_VARIABLES}
    if not any(given.values()):
        return {}
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise ConfigError(
            f"message signing needs {', '.join(SIGNING_VARIABLES)}; {', '.join(missing)} "
            "not set (set all three, or none to turn signing off)"
        )
    key, cert, store = given.values()
    return {
        # Tasks are signed, and only signed tasks are accepted: an unsigned or altered
        # message is refused by the worker, never run.
        "task_serializer": "auth",
        "accept_content": ["auth"],
        "security_key": key,
        "security_certificate": cert,
        "security_cert_store": store,
        "security_digest": DEFAULT_SIGNING_DIGEST,
    }


def setup_signing(app: Any) -> None:
    """Register the ``auth`` serializer on ``app`` when its settings ask for it.

    Results and remote-control messages stay plain JSON (Celery signs task messages
    only), so ``json`` stays trusted beside ``auth``.
    """
    if app.conf.task_serializer != "auth":
        return
    try:
        app.setup_security(
            allowed_serializers=["application/data", "application/json"], serializer="json"
        )
    except Exception as e:  # ImproperlyConfigured, a missing file, a bad key
        raise ConfigError(
            f"message signing: {e.__class__.__name__}: {e} (check the files named by "
            f"{', '.join(SIGNING_VARIABLES)} or the security_* settings; the auth "
            "serializer needs the cryptography package: pip install 'state_tasks[security]')"
        ) from e


#: The key, in a task message's body (its ``embed``, the third part), under which the sender
#: copies the headers that decide what runs. Celery's ``auth`` serializer signs the body
#: only; a worker with signing on refuses a message whose headers differ from this copy.
SIGNED_HEADERS_KEY = "state_tasks_signed_headers"
#: The headers bound into the signed body: which task runs (``task``), as which operation
#: (``id``: a state task's operation id, which makes a redelivery a no-op), when
#: (``eta``, ``expires``), its retry count and its time limits. The others are display
#: (``argsrepr``, ``kwargsrepr``, ``shadow``, ``origin``) or tracing (``root_id``,
#: ``parent_id``) and are not bound.
SIGNED_HEADERS = (
    "task",
    "id",
    "eta",
    "expires",
    "retries",
    "timelimit",
    "ignore_result",
    # A fan-in member's barrier: its arrival may send the barrier's (signed) 'then' task.
    FAN_IN_HEADER,
)


def _comparable(value: Any) -> Any:
    """A header value as it reads after a trip through any broker (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))


def bind_headers(headers: Mapping[str, Any], body: Any) -> None:
    """Copy the :data:`SIGNED_HEADERS` of ``headers`` into ``body``'s ``embed`` (a task
    message of Celery's protocol 2: ``(args, kwargs, embed)``), before it is serialized and
    so signed. Other bodies are left alone."""
    if isinstance(body, (tuple, list)) and len(body) == 3 and isinstance(body[2], dict):
        body[2][SIGNED_HEADERS_KEY] = {
            name: _comparable(headers.get(name)) for name in SIGNED_HEADERS
        }


def unbound_header(headers: Mapping[str, Any], payload: Any) -> str | None:
    """Why a signed message's ``headers`` are not those its sender signed, or ``None``.

    ``payload`` is the decoded (and verified) body. A message without the signed copy
    (from a sender that does not run :func:`bind_headers`) is refused too: its headers
    could say anything.
    """
    embed = payload[2] if isinstance(payload, (tuple, list)) and len(payload) == 3 else None
    signed = embed.get(SIGNED_HEADERS_KEY) if isinstance(embed, dict) else None
    if not isinstance(signed, dict):
        return (
            "its signed body does not name the task it is delivered as (sent by a client "
            "without state_tasks' signed headers)"
        )
    for name in SIGNED_HEADERS:
        given = _comparable(headers.get(name))
        if given != signed.get(name):
            return (
                f"its {name!r} header ({_short(given)}) is not the one its sender signed "
                f"({_short(signed.get(name))})"
            )
    return None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Task messages nested deeper than this (the message's own two levels included) are
#: refused when decoded. Python's JSON decoder stops near 1,000 levels, and a prefork
#: worker's pool failed well before that.
DEFAULT_MAX_JSON_DEPTH = 256


def limit_json_depth(max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> None:
    """Make kombu's JSON decoder (messages, and the JSON inside signed ones) refuse text
    nested deeper than ``max_depth``: kombu reports it as a ``DecodeError`` and the worker
    logs the message and drops it. Idempotent; affects the whole process."""
    from kombu.serialization import registry

    decode: Callable[[Any], Any] = registry._decoders["application/json"]
    if getattr(decode, "max_depth", None) is not None:
        return

    def loads(text: Any) -> Any:
        try:
            value = decode(text)
        except RecursionError:  # deeper than the interpreter's stack: surely too deep
            raise ValueError(too_deep) from None
        # Cheap first: depth cannot exceed the number of opening brackets.
        raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        brackets = raw.count("[") + raw.count("{")
        if brackets > max_depth and deeper_than(value, max_depth):
            raise ValueError(too_deep)
        return value

    too_deep = (
        f"a JSON message nested deeper than {max_depth} levels was refused "
        "(state_tasks.security.DEFAULT_MAX_JSON_DEPTH)"
    )

    loads.max_depth = max_depth  # type: ignore[attr-defined]
    registry._decoders["application/json"] = loads


#: Characters a caller could use to forge or garble a log line: C0/C1 controls but the
#: tab (newlines included), and the invisible format characters (bidi overrides, zero
#: widths, line and paragraph separators).
_UNSAFE_IN_LOGS = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]"
)


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


class OneLineLogs(logging.Filter):
    """One log record, one line: control characters in a record's message are written as
    escapes (``\\n``, ``\\x1b``), so a value or a name chosen by a caller cannot forge a
    line of the log or colour a terminal. Tracebacks are left alone (they are formatted
    after this filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _UNSAFE_IN_LOGS.search(message):
            record.msg, record.args = _UNSAFE_IN_LOGS.sub(_escape, message), None
        return True


def one_line_logs(logger: logging.Logger) -> None:
    """Add :class:`OneLineLogs` to each of ``logger``'s handlers (once)."""
    for handler in logger.handlers:
        if not any(isinstance(f, OneLineLogs) for f in handler.filters):
            handler.addFilter(OneLineLogs())
