"""Your Celery overrides for state_tasks: the documented place for them.

state_tasks' own settings live inside the package (``state_tasks/settings.py``: JSON
only, late acks, the pool its adapter needs, ...), so a ``celeryconfig.py`` that your
project already has never replaces them by accident. To change a setting, name a module
of yours (this file, a copy of it, or any importable module) in ``CELERY_CONFIG_MODULE``;
its public names are applied on top of the package's settings::

    CELERY_CONFIG_MODULE=celeryconfig celery -A state_tasks worker

Overrides change what the guarantees (docs/guarantees.md) rest on when they touch
``task_acks_late``, ``task_reject_on_worker_lost``, ``worker_prefetch_multiplier`` or
the serializers: leave those as they are.
"""

# Route the state operations to a queue of their own, so they never wait behind slow
# handlers (then start one worker with -Q state and others with -Q celery):
# task_routes = {"state::*": {"queue": "state"}, "triggers::*": {"queue": "state"}}

# How long the result of a state task is kept in the result backend, in seconds:
# result_expires = 3600
