"""The domain core of state_tasks: no Celery, no broker, unit-testable alone.

- :mod:`~state_tasks.core.errors`: the :class:`StateError` family;
- :mod:`~state_tasks.core.ops`: update ops (pure);
- :mod:`~state_tasks.core.codec`: JSON text in and out of storage;
- :mod:`~state_tasks.core.models`: pydantic payloads, the event, trigger specs;
- :mod:`~state_tasks.config`: ``state.yaml`` and the adapter it names;
- :mod:`~state_tasks.core.service`: the state functions over an adapter, firing events;
- :mod:`~state_tasks.core.urls`, :mod:`~state_tasks.core.ownership`: URL redaction, pid locks.
"""
