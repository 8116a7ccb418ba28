"""State triggers: the registry and match index (pure), and their Celery tasks."""

from triggers.registry import MatchIndex, Trigger, TriggerRegistry, trigger_from_spec

__all__ = ["MatchIndex", "Trigger", "TriggerRegistry", "trigger_from_spec"]
