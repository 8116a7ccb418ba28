"""State triggers: what reacts to a stored change.

- :mod:`triggers.registry`: stored registrations and the match index (no Celery);
- :mod:`triggers.declarations`: the ``state_trigger`` decorator and import-time declarations;
- :mod:`triggers.dispatch`: matching a change and sending its trigger work;
- :mod:`triggers.tasks`: the gate and the registration tasks.
"""
