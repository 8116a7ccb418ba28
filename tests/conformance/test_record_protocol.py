"""The operation record protocol (state_tasks.adapters.records), held to one table of cases.

The KvStore, the file store and the Bridge keep their records with
:class:`~state_tasks.adapters.records.OpRecords`; the RedisAdapter keeps them in Lua (a hash
while whole, a string marker once settled). Each case below is an operation applied under
an id on a fresh adapter, then settled: every adapter must answer its repeat with the same
versions, and the marker each storing adapter keeps must be the same text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from state_tasks.adapters.base import StateAdapter
from state_tasks.adapters.file_store import FileKvStore
from state_tasks.adapters.kv_store import KvStore
from state_tasks.adapters.records import settled_marker, settled_versions
from state_tasks.adapters.redis import RedisAdapter
from state_tasks.core.service import StateService


@dataclass(frozen=True)
class Case:
    name: str
    #: calls made first, without an operation id
    before: list[tuple[str, dict[str, Any]]]
    #: the call made under the operation id
    call: tuple[str, dict[str, Any]]
    #: the marker it leaves once settled ('' for none) ...
    marker: str
    #: ... and the versions its repeat answers with (None: none kept)
    versions: tuple[int, ...] | None


INCREMENT = [{"increment": {"field": "n"}}]

CASES = [
    Case("set of a new key", [], ("state::set", {"key": "k", "value": 1}), "v1", (1,)),
    Case(
        "set over a value",
        [("state::set", {"key": "k", "value": 1})],
        ("state::set", {"key": "k", "value": 2}),
        "v2",
        (2,),
    ),
    Case("update of a new key", [], ("state::update", {"key": "k", "ops": INCREMENT}), "v1", (1,)),
    Case(
        "delete of a value",
        [("state::set", {"key": "k", "value": 1})],
        ("state::delete", {"key": "k"}),
        "",
        None,
    ),
    Case("delete of an absent key", [], ("state::delete", {"key": "k"}), "", None),
    Case(
        "batch of sets and updates: one run",
        [],
        (
            "state::batch",
            {
                "operations": [
                    {"op": "set", "key": "a", "value": {"n": 1}},
                    {"op": "set", "key": "b", "value": 2},
                    {"op": "update", "key": "a", "ops": INCREMENT},
                ]
            },
        ),
        "v1-3",
        (1, 2, 3),
    ),
    Case(
        "batch with deletes: the versions of its sets and updates",
        [("state::set", {"key": "x", "value": {"n": 1}})],
        (
            "state::batch",
            {
                "operations": [
                    {"op": "update", "key": "x", "ops": INCREMENT},
                    {"op": "delete", "key": "y"},
                    {"op": "delete", "key": "x"},
                    {"op": "set", "key": "z", "value": 3},
                ]
            },
        ),
        "v2-3",
        (2, 3),
    ),
    Case(
        "batch of deletes only",
        [("state::set", {"key": "x", "value": 1})],
        ("state::batch", {"operations": [{"op": "delete", "key": "x"}]}),
        "",
        None,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_markers_encode_and_decode_the_versions_of_each_case(case: Case) -> None:
    assert settled_marker(case.versions or ()) == case.marker
    assert settled_versions(case.marker) == case.versions
    # markers from before they kept versions are still understood: without them
    assert settled_versions("1") is None


def marker_kept(adapter: StateAdapter, op_id: str) -> str | None:
    """The settled marker the adapter keeps for ``op_id``, as settled_marker text ('': one
    without versions); None for an adapter whose records live elsewhere (the Bridge)."""
    if isinstance(adapter, RedisAdapter):
        text = adapter.client.get(adapter.layout.op_key(op_id, adapter.layout.tag("s")))
        return "" if text == "1" else str(text)
    if isinstance(adapter, KvStore | FileKvStore):
        settled = adapter._ops.settled[op_id]
        kept = None if isinstance(settled, float) else settled[1]
        return settled_marker(settled_versions(kept) or ())
    return None


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_adapter_keeps_and_answers_the_same_marker(make_adapter: Any, case: Case) -> None:
    # Given a fresh adapter, and what the case writes first
    adapter = make_adapter()
    service = StateService(adapter)
    for function, payload in case.before:
        service.call(function, {"scope": "s", **payload})
    # When the case's call is applied under an id and its record settled (the service
    # settles once the thread has moved on to its next call)
    function, payload = case.call
    first = service.call(function, {"scope": "s", **payload}, "op-1")
    service.call("state::get", {"scope": "s", "key": "k"})
    repeat = service.call(function, {"scope": "s", **payload}, "op-1")
    # Then the repeat answers the settled form with the case's versions
    if function == "state::delete":
        assert repeat is None
    elif function == "state::batch":
        assert repeat["replayed"] is True
        kinds = [operation["op"] for operation in payload["operations"]]
        given = tuple(
            result["version"]
            for kind, result in zip(kinds, repeat["results"], strict=True)
            if kind != "delete"
        )
        assert (given or None) == case.versions, (first, repeat)
    else:
        assert repeat["replayed"] is True
        assert (repeat.get("version"),) == (case.versions or (None,)), (first, repeat)
    # and the marker it keeps is the same text on every storing adapter
    kept = marker_kept(adapter, "op-1")
    if kept is not None:
        assert kept == case.marker
