"""State triggers: what reacts to a stored change.

- :mod:`state_tasks.triggers.registry`: stored registrations and the match index (no Celery);
- :mod:`state_tasks.triggers.declarations`: the ``state_trigger`` decorator and import-time
  declarations;
- :mod:`state_tasks.triggers.dispatch`: matching a change and sending its trigger work;
- :mod:`state_tasks.triggers.tasks`: the gate and the registration tasks.
"""
