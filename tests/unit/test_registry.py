"""Trigger ids, the match index, and a registry that follows its store."""

from __future__ import annotations

import pytest

from state_tasks.adapters.kv_store import KvStore
from state_tasks.core.errors import ValidationError
from state_tasks.triggers.registry import MatchIndex, TriggerRegistry, trigger_from_spec


def spec(function_id: str = "h", **config: str) -> dict[str, object]:
    return {"type": "state", "function_id": function_id, "config": config}


def test_same_trigger_same_id_different_config_different_id() -> None:
    a = trigger_from_spec(spec(scope="users", key="profile"))
    assert a.id == trigger_from_spec(spec(scope="users", key="profile")).id
    assert a.id != trigger_from_spec(spec(scope="users")).id
    assert a.id != trigger_from_spec(spec("other", scope="users", key="profile")).id
    assert (
        a.id != trigger_from_spec(spec(scope="users", key="profile", condition_function_id="c")).id
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "cron", "function_id": "h"},
        {"type": "state"},
        {"type": "state", "function_id": ""},
        {"type": "state", "function_id": "h", "config": {"scope": ""}},
        {"type": "state", "function_id": "h", "config": {"scopes": "users"}},
        {"type": "state", "function_id": "h", "config": {"key": 5}},
    ],
)
def test_bad_registrations_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="register_trigger"):
        trigger_from_spec(bad)


def test_filters_match_exactly_and_omitted_filters_match_everything() -> None:
    both = trigger_from_spec(spec("both", scope="users", key="profile"))
    scope_only = trigger_from_spec(spec("scope", scope="users"))
    key_only = trigger_from_spec(spec("key", key="profile"))
    everything = trigger_from_spec(spec("all"))
    index = MatchIndex([both, scope_only, key_only, everything])

    def names(scope: str, key: str) -> set[str]:
        return {t.function_id for t in index.match(scope, key)}

    assert names("users", "profile") == {"both", "scope", "key", "all"}
    assert names("users", "other") == {"scope", "all"}
    assert names("orders", "profile") == {"key", "all"}
    assert names("users2", "profile2") == {"all"}
    assert names("user", "profil") == {"all"}


def test_registry_register_is_idempotent_and_unregister_works() -> None:
    registry = TriggerRegistry(KvStore())
    first = registry.register(spec(scope="s"))
    registry.register(spec(scope="s"))
    assert [t.id for t in registry.list()] == [first.id]
    assert registry.unregister(first.id) is True
    assert registry.unregister(first.id) is False
    assert registry.list() == []


def test_registry_index_follows_changes_made_by_another_registry() -> None:
    store = KvStore()
    mine, theirs = TriggerRegistry(store), TriggerRegistry(store)
    assert mine.match("s", "k") == []
    trigger = theirs.register(spec(scope="s"))
    assert mine.match("s", "k") == [trigger]
    theirs.unregister(trigger.id)
    assert mine.match("s", "k") == []


def test_triggers_never_show_up_as_groups() -> None:
    store = KvStore()
    TriggerRegistry(store).register(spec())
    assert store.list_groups() == []
