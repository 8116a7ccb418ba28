"""The KvStore's change log (``MemoryChangeLog``: positions, trims by count and by age,
epochs, a log loaded from disk with gaps), the events its entries read as, and
``change_log`` in ``state.yaml``. The log on every adapter, through the service:
tests/conformance/test_change_log.py."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from state_tasks.adapters.changelog import SCAN_MIN, MemoryChangeLog
from state_tasks.adapters.kv_store import KvStore
from state_tasks.config import parse_config
from state_tasks.core.changes import (
    AT_END,
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_ENTRIES,
    ChangeLogSettings,
    ChangesCompacted,
    LogEntry,
    change_event_id,
    entry_event,
    expiry_event_id,
)
from state_tasks.core.errors import ConfigError, StateError, ValidationError
from state_tasks.core.service import StateService


class Clock:
    def __init__(self, now_ms: int = 1_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def new_log(clock: Clock | None = None, **settings: Any) -> MemoryChangeLog:
    return MemoryChangeLog(ChangeLogSettings(**settings), clock or Clock())


def append(log: MemoryChangeLog, n: int, scope: str = "s", at_ms: int | None = None) -> None:
    """``n`` sets of key ``k<i>`` to ``i`` (the entry's number, counted from 1)."""
    for _ in range(n):
        i = log.last + 1
        log.append("c", scope, f"k{i}", None, str(i), i, f"op{i}", at_ms)


def values(
    log: MemoryChangeLog, after: str | None = None, limit: int = 1000, **filters: Any
) -> list[Any]:
    page = log.read(filters.get("scope"), filters.get("prefix"), after, limit)
    return [event["new_value"] for event, _ in page.entries]


# -- positions --------------------------------------------------------------------------------


def test_each_entry_has_the_position_after_it_and_reads_resume_there() -> None:
    log = new_log()
    append(log, 5)
    page = log.read(None, None, None, 2)
    assert [event["new_value"] for event, _ in page.entries] == [1, 2]
    assert [position for _, position in page.entries] == [log.position(1), log.position(2)]
    assert page.position == log.position(2)
    assert values(log, page.position) == [3, 4, 5]
    assert values(log, log.position(4)) == [5]
    end = log.read(None, None, log.position(5), 10)
    assert end.entries == [] and end.position == log.position(5)
    assert log.position(3) == f"{log.epoch}.3" and log.parse(log.position(3)) == 3


def test_an_empty_log_reads_nothing_from_before_its_first_entry() -> None:
    log = new_log()
    page = log.read(None, None, None, 10)
    assert page.entries == [] and page.position == log.position(0)
    append(log, 1)
    assert values(log, page.position) == [1]


def test_now_reads_nothing_and_the_newest_position() -> None:
    log = new_log(max_entries=2)
    at_end = log.read(None, None, AT_END, 10)
    assert at_end.entries == [] and at_end.position == log.position(0)
    append(log, 5)
    at_end = log.read("s", None, AT_END, 10)
    assert at_end.entries == [] and at_end.position == log.position(5)
    append(log, 1)
    assert values(log, at_end.position) == [6]


@pytest.mark.parametrize(
    "position", ["", "x", "abc.", "abc.-1", "abc.1e3", "abc. 1", "abc.1" + "0" * 19]
)
def test_a_position_that_is_none_of_ours_is_a_validation_error(position: str) -> None:
    log = new_log()
    append(log, 1)
    with pytest.raises(ValidationError):
        log.read(None, None, position, 10)


def test_a_position_of_another_epoch_or_ahead_of_the_log_is_compacted() -> None:
    log = new_log()
    append(log, 3)
    restarted = new_log()  # a store that started again: a new epoch, its own numbers
    append(restarted, 5)
    assert restarted.epoch != log.epoch
    for position in (log.position(2), restarted.position(6), restarted.position(99)):
        with pytest.raises(ChangesCompacted) as raised:
            restarted.read(None, None, position, 10)
        assert raised.value.oldest == restarted.position(0)
    assert values(restarted, restarted.position(0)) == [1, 2, 3, 4, 5]


# -- bounded ----------------------------------------------------------------------------------


def test_a_log_keeps_max_entries_and_a_position_before_them_is_compacted() -> None:
    log = new_log(max_entries=3)
    append(log, 5)
    assert (len(log), log.first, log.last) == (3, 3, 5)
    assert values(log) == [3, 4, 5]  # from the oldest kept
    assert values(log, log.position(2)) == [3, 4, 5]  # right before the oldest: fine
    for behind in (log.position(0), log.position(1)):
        with pytest.raises(ChangesCompacted) as raised:
            log.read(None, None, behind, 10)
        assert raised.value.oldest == log.position(2)
        assert values(log, raised.value.oldest) == [3, 4, 5]


def test_trimming_a_long_log_keeps_positions_exact() -> None:
    log = new_log(max_entries=100)
    for _ in range(50):
        append(log, 97)  # the front is cut off the list now and then
        assert len(log) == min(100, log.last)
        assert values(log, log.position(log.last - 2)) == [log.last - 1, log.last]
    assert log.first == log.last - 99
    assert values(log, limit=1000) == list(range(log.first, log.last + 1))


def test_a_log_keeps_max_age_s_trimmed_by_appends_and_by_reads() -> None:
    clock = Clock(1_000_000)
    log = new_log(clock, max_age_s=10)
    append(log, 2)  # at 1,000,000
    clock.now_ms += 6_000
    append(log, 2)  # at 1,006,000
    clock.now_ms += 5_000  # the first two are 11 s old
    append(log, 1)
    assert values(log) == [3, 4, 5]
    with pytest.raises(ChangesCompacted) as raised:
        log.read(None, None, log.position(1), 10)
    assert raised.value.oldest == log.position(2)
    clock.now_ms += 5_001  # idle: a read trims too
    assert values(log) == [5]
    log.trim()
    assert len(log) == 1
    clock.now_ms += 10_000
    assert values(log) == [] and len(log) == 0
    with pytest.raises(ChangesCompacted) as raised:
        log.read(None, None, log.position(4), 10)
    assert raised.value.oldest == log.position(5)  # everything kept: nothing, from 5 on
    assert log.read(None, None, log.position(5), 10).entries == []


def test_an_entry_is_kept_exactly_max_age_s() -> None:
    clock = Clock(0)
    log = new_log(clock, max_age_s=1)
    append(log, 1)
    clock.now_ms = 1_000
    assert values(log) == [1]
    clock.now_ms = 1_001
    assert values(log) == []


# -- filters ----------------------------------------------------------------------------------


def test_filters_pass_over_other_scopes_and_say_how_far_they_looked() -> None:
    log = new_log()
    for scope in ["a", "ab", "b", "a", "abc", "b"]:
        append(log, 1, scope)
    assert values(log, scope="a") == [1, 4]
    assert values(log, prefix="ab") == [2, 5]
    assert values(log, prefix="a") == [1, 2, 4, 5]
    assert values(log, scope="ab", prefix="a") == [2]
    page = log.read("a", None, None, 1)
    assert page.position == log.position(1)  # a full page: after its last entry
    page = log.read("a", None, log.position(1), 10)
    assert page.position == log.position(6)  # looked at everything
    nothing = log.read("zz", None, None, 10)
    assert nothing.entries == [] and nothing.position == log.position(6)


def test_a_filtered_read_looks_at_a_bounded_number_of_entries() -> None:
    log = new_log()
    append(log, SCAN_MIN * 2 + 10, "busy")
    append(log, 1, "quiet")
    position: str | None = None
    reads = 0
    found: list[Any] = []
    while True:
        page = log.read("quiet", None, position, 5)
        reads += 1
        found += [event["new_value"] for event, _ in page.entries]
        if page.position == position:
            break
        position = page.position
    assert found == [SCAN_MIN * 2 + 11]
    assert reads == 4  # 2,000 + 2,000 + the rest, then one that finds nothing new


# -- loaded from disk -------------------------------------------------------------------------


def entry(i: int, at_ms: int = 1_000_000) -> LogEntry:
    return LogEntry("u", "s", "k", str(i - 1), str(i), i, None, at_ms)


def test_a_loaded_log_goes_on_from_its_epoch_and_numbers() -> None:
    log = MemoryChangeLog(ChangeLogSettings(), Clock(), epoch="e1", last=10)
    log.load([(11, entry(11)), (12, entry(12))])
    assert (log.first, log.last) == (11, 12)
    assert values(log, "e1.10") == [11, 12]
    append(log, 1)
    assert log.last == 13 and values(log, "e1.12") == [13]


def test_loading_skips_what_was_read_twice_and_starts_again_after_a_gap() -> None:
    log = MemoryChangeLog(ChangeLogSettings(), Clock(), epoch="e2")
    log.load(
        [(1, entry(1)), (2, entry(2)), (2, entry(2)), (3, entry(3)), (7, entry(7)), (8, entry(8))]
    )
    assert (log.first, log.last, len(log)) == (7, 8, 2)
    assert values(log) == [7, 8]
    with pytest.raises(ChangesCompacted) as raised:  # a reader before the gap is told
        log.read(None, None, "e2.3", 10)
    assert raised.value.oldest == "e2.6"
    assert values(log, "e2.6") == [7, 8]


def test_loading_trims_what_is_too_old_now() -> None:
    clock = Clock(100_000)
    log = MemoryChangeLog(ChangeLogSettings(max_age_s=10, max_entries=2), clock, epoch="e3")
    log.load(
        [(1, entry(1, 50_000)), (2, entry(2, 95_000)), (3, entry(3, 96_000)), (4, entry(4, 97_000))]
    )
    assert values(log) == [3, 4]  # by count
    clock.now_ms = 106_500
    assert values(log) == [4]  # by age


# -- what an entry reads as -----------------------------------------------------------------


def test_an_entry_reads_as_its_trigger_event() -> None:
    created = LogEntry("c", "s", "k", None, '{"a":1}', 3, "op-1", 1_700_000_000_123)
    assert entry_event(created) == {
        "type": "state",
        "event_type": "state:created",
        "scope": "s",
        "key": "k",
        "old_value": None,
        "new_value": {"a": 1},
        "event_id": "op-1",
        "timestamp": "2023-11-14T22:13:20.123000+00:00",
        "version": 3,
    }
    updated = entry_event(LogEntry("u", "s", "k", "null", "18446744073709551617", 4, None, 0))
    assert updated["event_type"] == "state:updated"
    assert updated["old_value"] is None and updated["new_value"] == 2**64 + 1
    assert updated["event_id"] == change_event_id("state:updated", "s", "k", 4)
    deleted = entry_event(LogEntry("d", "s", "k", "[1]", None, 4, "op-2:3", 0))
    assert (deleted["event_type"], deleted["reason"], deleted["event_id"]) == (
        "state:deleted",
        "deleted",
        "op-2:3",
    )
    assert deleted["old_value"] == [1] and deleted["new_value"] is None
    expired = entry_event(LogEntry("x", "s", "k", '"v"', None, 5, None, 0))
    assert (expired["event_type"], expired["reason"]) == ("state:deleted", "expired")
    assert expired["event_id"] == expiry_event_id("s", "k", 5)
    assert "reason" not in entry_event(created)


def test_derived_event_ids_differ_for_different_changes() -> None:
    ids = {
        change_event_id(event_type, scope, key, version)
        for event_type in ("state:created", "state:updated", "state:deleted")
        for scope, key in (("s", "k"), ("s", "k2"), ("s2", "k"), ("s", "k:1"), ("s:k", "1"))
        for version in (1, 2)
    }
    assert len(ids) == 3 * 5 * 2
    assert all(i.startswith("v-") for i in ids)
    assert change_event_id("state:created", "s", "k", 1) == change_event_id(
        "state:created", "s", "k", 1
    )
    assert expiry_event_id("s", "k", 1) != expiry_event_id("s", "k", 2)


# -- the KvStore ----------------------------------------------------------------------------


def test_the_kv_store_logs_on_its_own_clock_and_can_be_told_to_keep_none() -> None:
    clock = Clock(1_700_000_000_000)
    store = KvStore(clock_ms=clock)
    store.use_change_log(ChangeLogSettings(max_age_s=5))
    service = StateService(store)
    before = service.call("state::changes", {})["cursor"]
    service.call("state::set", {"scope": "s", "key": "k", "value": 1})
    page = service.call("state::changes", {"after": before})
    assert page["changes"][0]["timestamp"] == "2023-11-14T22:13:20.000000+00:00"
    clock.now_ms += 5_000
    assert len(service.call("state::changes", {"after": before})["changes"]) == 1
    clock.now_ms += 1
    assert service.call("state::changes", {})["changes"] == []
    # a reader that had not read it is told; one that had goes on
    with pytest.raises(StateError) as raised:
        service.call("state::changes", {"after": before})
    assert raised.value.code == "COMPACTED"
    assert service.call("state::changes", {"after": page["cursor"]})["changes"] == []

    off = KvStore()
    off.use_change_log(None)
    service = StateService(off)
    service.call("state::set", {"scope": "s", "key": "k", "value": 1})
    with pytest.raises(ConfigError) as refused:
        service.call("state::changes", {})
    assert "change_log: false" in refused.value.message


# -- change_log in state.yaml -----------------------------------------------------------------


def document(change_log: Any = "omitted") -> dict[str, Any]:
    config: dict[str, Any] = {"adapter": {"class": "kv"}}
    if change_log != "omitted":
        config["change_log"] = change_log
    return {"modules": [{"class": "modules::state::StateModule", "config": config}]}


@pytest.mark.parametrize(
    ("given", "settings"),
    [
        ("omitted", ChangeLogSettings()),
        (True, ChangeLogSettings()),
        (None, ChangeLogSettings()),  # "change_log:" with nothing after it
        ({}, ChangeLogSettings()),
        ({"max_entries": 10}, ChangeLogSettings(max_entries=10, max_age_s=DEFAULT_MAX_AGE_S)),
        ({"max_age_s": 60}, ChangeLogSettings(max_entries=DEFAULT_MAX_ENTRIES, max_age_s=60)),
        ({"max_entries": 1, "max_age_s": 1}, ChangeLogSettings(max_entries=1, max_age_s=1)),
        (False, None),
    ],
)
def test_change_log_in_state_yaml(given: Any, settings: ChangeLogSettings | None) -> None:
    config = parse_config(document(given), "state.yaml")
    assert config.change_log == settings
    adapter = config.build_adapter()
    assert adapter.change_log == settings


def test_the_defaults_are_a_hundred_thousand_entries_and_a_day() -> None:
    assert ChangeLogSettings() == ChangeLogSettings(max_entries=100_000, max_age_s=86_400)


def test_change_log_false_in_state_yaml_makes_changes_a_config_error() -> None:
    adapter = parse_config(document(False), "state.yaml").build_adapter()
    adapter.open()
    service = StateService(adapter)
    assert service.call("state::set", {"scope": "s", "key": "k", "value": 1})["version"] >= 1
    with pytest.raises(ConfigError) as raised:
        service.call("state::changes", {})
    assert raised.value.code == "CONFIG_ERROR"
    assert "change_log" in raised.value.message
    adapter.close()


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ("yes please", "change_log: expected false, true or a mapping"),
        (1, "change_log: expected false, true or a mapping"),
        (0, "change_log: expected false, true or a mapping"),
        ([], "change_log: expected false, true or a mapping"),
        ({"max_entries": 0}, "change_log: max_entries"),
        ({"max_entries": -5}, "change_log: max_entries"),
        ({"max_entries": "many"}, "change_log: max_entries"),
        ({"max_age_s": 0}, "change_log: max_age_s"),
        ({"max_age_s": 11 * 365 * 86_400}, "change_log: max_age_s"),
        ({"max_entrys": 10}, "change_log: max_entrys"),
    ],
)
def test_a_bad_change_log_is_a_config_error_naming_the_field(given: Any, named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(document(given), "state.yaml")
    assert raised.value.message.startswith("state.yaml: modules[0].config.change_log"), (
        raised.value.message
    )
    assert named in raised.value.message


def test_change_log_inside_the_adapter_config_is_refused() -> None:
    doc = [
        {
            "class": "modules::state::StateModule",
            "config": {"adapter": {"class": "kv", "config": {"change_log": False}}},
        }
    ]
    with pytest.raises(ConfigError) as raised:
        parse_config(doc, "state.yaml")
    assert "change_log" in raised.value.message


def test_a_typo_next_to_change_log_names_the_allowed_keys() -> None:
    doc = [{"class": "modules::state::StateModule", "config": {"adapter": {}, "changelog": {}}}]
    with pytest.raises(ConfigError) as raised:
        parse_config(doc, "state.yaml")
    assert "changelog" in raised.value.message
    assert "adapter, change_log" in raised.value.message


@pytest.mark.parametrize(("variable", "settings"), [("false", None), ("true", ChangeLogSettings())])
def test_change_log_from_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, settings: ChangeLogSettings | None
) -> None:
    """Every string of state.yaml is expanded from the environment; ``change_log:
    ${STATE_CHANGE_LOG:true}`` reads as the boolean it names, as the adapter's own boolean
    settings do."""
    monkeypatch.setenv("TEST_STATE_CHANGE_LOG", variable)
    config = parse_config(document("${TEST_STATE_CHANGE_LOG}"), "state.yaml")
    assert config.change_log == settings


def test_change_log_bounds_from_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_LOG_ENTRIES", "5000")
    config = parse_config(
        document({"max_entries": "${TEST_LOG_ENTRIES}", "max_age_s": "${TEST_LOG_AGE:3600}"}),
        "state.yaml",
    )
    assert config.change_log == ChangeLogSettings(max_entries=5000, max_age_s=3600)


# -- the public name --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "imports",
    [
        "from state_tasks import watch",
        "from state_tasks import Watcher, watch",
        "import state_tasks\nstate_tasks.Watcher\nwatch = state_tasks.watch",
    ],
)
def test_state_tasks_watch_is_the_function_however_it_is_imported(imports: str) -> None:
    """``from state_tasks import Watcher, watch`` (the order ruff sorts them in) must give
    the function ``watch``, not the module of the same name."""
    check = f"{imports}\nimport types\nassert not isinstance(watch, types.ModuleType), watch\n"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
