"""The Celery app of state_tasks, built by a factory and configured from ``celeryconfig``."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

import state_tasks.embedded_broker  # noqa: F401  (registers the statefs:// scheme)
from state_tasks.urls import is_embedded_broker

#: Modules holding the state and trigger tasks; imported by every worker.
TASK_MODULES = ("state_tasks.tasks", "triggers.tasks")


def create_app(name: str = "state_tasks", **settings: Any) -> Celery:
    """Build a Celery app with the settings of ``celeryconfig`` plus ``settings``.

    No connection is opened here. With the embedded filesystem broker, its
    folders are created when the configuration is first read.
    """
    app = Celery(name)
    app.config_from_object("celeryconfig")
    if settings:
        app.conf.update(settings)
    app.conf.include = list(TASK_MODULES)

    @app.on_after_configure.connect(weak=False)
    def _make_broker_folders(sender: Celery, **_: Any) -> None:
        options = sender.conf.broker_transport_options or {}
        if is_embedded_broker(sender.conf.broker_url):
            for option in ("data_folder_in", "data_folder_out", "control_folder"):
                if options.get(option):
                    os.makedirs(options[option], exist_ok=True)
        backend = str(sender.conf.result_backend or "")
        if backend.startswith("file://"):
            os.makedirs(backend[len("file://") :], exist_ok=True)

    return app


app = create_app()
