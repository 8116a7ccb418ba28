"""The Celery app of state_tasks: the package's settings, then the user's overrides."""

from __future__ import annotations

import os
import types
from typing import Any

from celery import Celery, signals
from celery.utils.imports import import_from_cwd

from state_tasks.core.connect_errors import bound_tls_handshakes
from state_tasks.core.errors import ConfigError
from state_tasks.core.urls import is_embedded_broker
from state_tasks.embedded_broker import result_folder  # (registers our schemes on import)
from state_tasks.security import bind_headers, limit_json_depth, setup_signing

#: Modules every worker imports: the state tasks, the trigger tasks, the worker's checks.
TASK_MODULES = (
    "state_tasks.tasks",
    "state_tasks.triggers.tasks",
    "state_tasks.worker",
    "state_tasks.coordination",
)
#: The package's own settings.
SETTINGS_MODULE = "state_tasks.settings"
#: The environment variable naming a module of the user's Celery overrides.
OVERRIDES_VARIABLE = "CELERY_CONFIG_MODULE"


def user_overrides() -> dict[str, Any]:
    """The public settings of the module named by ``$CELERY_CONFIG_MODULE`` (none if unset).

    The module is looked up in the current folder first, as Celery looks up its own
    ``celeryconfig``: the app is built lazily, after the ``celery`` command has taken the
    current folder off ``sys.path`` again.
    """
    name = os.environ.get(OVERRIDES_VARIABLE)
    if not name:
        return {}
    try:
        module = import_from_cwd(name)
    except ImportError as e:
        raise ConfigError(
            f"{OVERRIDES_VARIABLE}={name!r}: cannot import the module of Celery overrides: {e}; "
            "put it on the Python path (PYTHONPATH) or unset the variable"
        ) from e
    return {
        setting: value
        for setting, value in vars(module).items()
        if not setting.startswith("_") and not isinstance(value, types.ModuleType)
    }


# A rediss:// broker or result backend on a plain port fails in seconds, not never.
bound_tls_handshakes()


@signals.before_task_publish.connect(weak=False, dispatch_uid="state_tasks.bind_headers")
def _bind_headers(body: Any = None, headers: Any = None, **_: Any) -> None:
    """Every task message sent from this process carries, in its body, a copy of the
    headers that decide what runs: with signing on, the signature covers them, and a
    worker refuses a message whose headers were changed (:func:`bind_headers`)."""
    if headers is not None:
        bind_headers(headers, body)


def create_app(name: str = "state_tasks", **settings: Any) -> Celery:
    """Build a Celery app: the package's settings, the user's overrides, then ``settings``.

    No connection is opened here. With the embedded filesystem broker, its
    folders are created when the configuration is first read.
    """
    app = Celery(name)
    app.config_from_object(SETTINGS_MODULE)
    overrides = {**user_overrides(), **settings}
    if overrides:
        app.conf.update(overrides)
    app.conf.include = list(TASK_MODULES)

    @app.on_after_configure.connect(weak=False)
    def _setup_signing(sender: Celery, **_: Any) -> None:
        limit_json_depth()
        setup_signing(sender)

    @app.on_after_configure.connect(weak=False)
    def _make_broker_folders(sender: Celery, **_: Any) -> None:
        options = sender.conf.broker_transport_options or {}
        if is_embedded_broker(sender.conf.broker_url):
            for option in ("data_folder_in", "data_folder_out", "control_folder"):
                if options.get(option):
                    os.makedirs(options[option], exist_ok=True)
        results = result_folder(sender.conf.result_backend)
        if results:
            os.makedirs(results, exist_ok=True)

    return app


app = create_app()
