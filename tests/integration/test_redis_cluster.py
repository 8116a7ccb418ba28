"""RedisAdapter on a real Redis Cluster: the bucketed layout in place, list_groups over every
bucket, triggers seen in every bucket, and a clear error when the cluster is gone.

The session's cluster (three masters, one replica each) for what only reads and writes;
a small cluster of its own for the test that stops every node.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.cluster
from redis_acl import ACL_DOC, readme_acl_line

from state_tasks.adapters.redis import RedisAdapter
from state_tasks.adapters.redis.layout import CLUSTER_BUCKETS, bucket_of
from state_tasks.contrib.servers import RedisCluster
from state_tasks.core.errors import AdapterError, AdapterUnavailable

CLI = os.path.join(os.path.dirname(sys.executable), "state-tasks")

pytestmark = pytest.mark.own_broker


@pytest.fixture
def adapter(redis_cluster: RedisCluster) -> Iterator[RedisAdapter]:
    adapter = RedisAdapter(
        redis_url=redis_cluster.cluster_url(), key_prefix=f"cl-{uuid.uuid4().hex[:8]}"
    )
    yield adapter
    adapter.close()


def one_scope_per_bucket() -> list[str]:
    """A scope in each of the buckets, in bucket order."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < CLUSTER_BUCKETS:
        found.setdefault(bucket_of(f"scope-{i}"), f"scope-{i}")
        i += 1
    return [found[bucket] for bucket in range(CLUSTER_BUCKETS)]


def test_a_scopes_keys_share_a_slot_and_the_buckets_spread_over_every_master(
    adapter: RedisAdapter, redis_cluster: RedisCluster
) -> None:
    # Given values with a ttl (so every per-scope key exists) in scopes of every bucket
    scopes = one_scope_per_bucket()
    for scope in scopes:
        adapter.set_versioned(scope, "k", '{"n": 1}', op_id=f"op-{scope}", ttl_ms=600_000)
    client = adapter.client
    for scope in scopes[:20]:
        keys = adapter.layout.mutation_keys(scope, f"op-{scope}")
        assert all(client.exists(key) for key in [*keys[:2], *keys[3:8], keys[10]])
        # Then all of them, the pending expiries' keys (KEYS[9..10]) and the bucket's change
        # log (KEYS[11]) too, are in one slot (Redis would refuse the script otherwise)
        assert len(keys) == 11
        assert client.type(keys[10]) == "stream"
        assert len({client.keyslot(key) for key in keys}) == 1
    # And the buckets (so the scopes, groups and due indexes) are spread over the three
    # masters, evenly
    owners = Counter(
        client.get_node_from_key(adapter.layout.scope_key(scope)).port for scope in scopes
    )
    assert sorted(owners.values()) == [85, 85, 86]
    assert set(owners) == {
        redis_cluster.master_of(adapter.layout.scope_key(s)) for s in scopes[::40]
    }


def test_list_groups_merges_every_bucket_and_pages_each_scope_once_in_order(
    adapter: RedisAdapter,
) -> None:
    # Given 300 scopes (Unicode names too) spread over the buckets, 20 of them emptied
    scopes = [f"g-{i:03d}" for i in range(280)] + [f"g-é{i}" for i in range(10)]
    scopes += [f"g-日本{i}" for i in range(10)]
    for i, scope in enumerate(scopes):
        adapter.set(scope, "a", "1")
        if i % 3 == 0:
            adapter.set(scope, "b", "2")
    for scope in scopes[:20]:
        adapter.delete(scope, "a")
        adapter.delete(scope, "b")
    live = sorted(scopes[20:])
    assert len({bucket_of(scope) for scope in live}) > 150
    # Then list_groups has each live scope once, sorted
    assert adapter.list_groups() == live
    # And pages of 7 after each cursor give the same, once each, with their counts
    rows: list[tuple[str, int | None]] = []
    after = None
    while True:
        page, more = adapter.list_groups_page("", after, 7, with_counts=True)
        rows += page
        if not more:
            break
        after = page[-1][0]
    assert [scope for scope, _ in rows] == live
    assert all(count == (2 if scopes.index(s) % 3 == 0 else 1) for s, count in rows)
    # And a prefix keeps to it
    page, more = adapter.list_groups_page("g-日本", None, 100, with_counts=False)
    assert ([s for s, _ in page], more) == (sorted(s for s in live if "日本" in s), False)


def test_a_trigger_registered_is_seen_by_mutations_in_every_bucket(
    adapter: RedisAdapter, redis_cluster: RedisCluster
) -> None:
    # Given a second process's adapter on the same cluster and prefix
    other = RedisAdapter(redis_url=redis_cluster.cluster_url(), key_prefix=adapter.key_prefix)
    try:
        scopes = one_scope_per_bucket()
        other.set(scopes[0], "k", "0")
        before = other.triggers_version()
        # When a trigger is registered
        assert adapter.triggers_put("t1", '{"id": "t1"}') is True
        # Then a change in every bucket reads the new version with its change (and so
        # reloads the triggers), which loads the new trigger
        for scope in scopes:
            other.set(scope, "k", "1")
            assert other.triggers_version() > before, scope
        assert other.triggers_load() == {"t1": '{"id": "t1"}'}
        # And an unregistration moves every bucket on again
        seen = other.triggers_version()
        assert adapter.triggers_delete("t1") is True
        for scope in scopes:
            other.delete(scope, "k")
            assert other.triggers_version() > seen, scope
        assert other.triggers_load() == {}
    finally:
        other.close()


def test_a_call_with_keys_in_several_slots_is_an_adapter_error(adapter: RedisAdapter) -> None:
    # redis-py refuses it before sending (a RedisClusterException): no retry would mend it
    keys = ["cross-a", "cross-b"]
    assert adapter.client.keyslot(keys[0]) != adapter.client.keyslot(keys[1])
    with pytest.raises(AdapterError, match="all keys must map") as caught:
        adapter.run("reading", None, lambda: adapter.client.mget(keys))
    assert not isinstance(caught.value, AdapterUnavailable)


def test_a_stopped_cluster_is_adapter_unavailable_naming_the_node(tmp_path: Path) -> None:
    # Given a small cluster of its own and an adapter that has used it
    cluster = RedisCluster(tmp_path / "doomed", masters=3, replicas=0)
    ports = list(cluster.ports)
    url = cluster.cluster_url()
    adapter = RedisAdapter(redis_url=url, key_prefix="doomed")
    try:
        adapter.set("users", "u1", '{"n": 1}')
        owner = cluster.master_of(adapter.layout.scope_key("users"))
        # When every node is stopped
        cluster.stop()
        # Then a call fails within seconds as AdapterUnavailable (a state task retries
        # it), naming the node that holds the scope
        started = time.monotonic()
        with pytest.raises(AdapterUnavailable) as failed:
            adapter.get("users", "u1")
        assert time.monotonic() - started < 15
        message = str(failed.value)
        assert f"node 127.0.0.1:{owner}" in message and "scope 'users'" in message
        assert url in message
        # And a new adapter (a worker starting now) says no seed answered, naming them
        with pytest.raises(AdapterUnavailable, match="no seed node answered") as fresh:
            RedisAdapter(redis_url=url, key_prefix="doomed").get("users", "u1")
        assert all(f"127.0.0.1:{port}" in str(fresh.value) for port in ports)
    finally:
        adapter.close()
        cluster.stop()


def test_one_master_down_stops_expiry_only_in_its_buckets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a small cluster of its own whose masters serve their slots while one is down
    # (no replica: the dead master's slots stay uncovered)
    cluster = RedisCluster(tmp_path / "partial", masters=3, replicas=0)
    for port in cluster.ports:
        redis.Redis(port=port).config_set("cluster-require-full-coverage", "no")
    adapter = RedisAdapter(redis_url=cluster.cluster_url(), key_prefix="partial")
    try:
        scopes = one_scope_per_bucket()
        owner = {
            s: adapter.client.get_node_from_key(adapter.layout.scope_key(s)).port for s in scopes
        }
        # and, in every bucket, an expiry handed over whose event is not known to be sent
        for scope in scopes:
            adapter.set_versioned(scope, "k1", "1", op_id=None, ttl_ms=50)
        time.sleep(0.2)
        assert len(adapter.expire_due(10_000)[0]) == CLUSTER_BUCKETS
        # and a key due in every bucket
        for scope in scopes:
            adapter.set_versioned(scope, "k2", "2", op_id=None, ttl_ms=50)
        time.sleep(0.2)
        # When one master dies
        dead = owner[scopes[0]]
        cluster.kill(dead)
        healthy = {s for s in scopes if owner[s] != dead}
        assert 150 < len(healthy) < CLUSTER_BUCKETS
        caplog.clear()
        # Then the sweep still expires the keys due in the healthy masters' buckets
        gone = adapter.expire_due(10_000)[0]
        assert {(e.scope, e.key) for e in gone} == {(s, "k2") for s in healthy}
        # And pending expiries are found (and claimed) in those buckets
        pending = adapter.pending_expiries(0, 10_000)
        assert {(e.scope, e.key) for e in pending} == {
            (s, key) for s in healthy for key in ("k1", "k2")
        }
        # And the failed buckets are logged once per sweep, naming the node
        failed = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
        assert len(failed) == 2 and all(f"127.0.0.1:{dead}" in m for m in failed), failed
        # And with every master down a sweep fails as AdapterUnavailable (retried)
        cluster.stop()
        with pytest.raises(AdapterUnavailable):
            adapter.expire_due(10)
    finally:
        adapter.close()
        cluster.stop()


@pytest.mark.parametrize("functions", [False, True], ids=["scripts", "functions"])
def test_the_readme_acl_line_with_its_cluster_additions_runs_the_adapter(
    redis_cluster: RedisCluster, functions: bool
) -> None:
    # Given a user made on every node (a cluster does not share ACLs) by the security
    # page's line (the scripts', or the functions' after an administrator installed them
    # on every master) and the additions its Redis Cluster section names
    seeds = ",".join(f"127.0.0.1:{port}" for port in redis_cluster.live_ports())
    if functions:
        done = subprocess.run(
            [CLI, "redis", "install-functions", "--url", f"redis+cluster://{seeds}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        installed = json.loads(done.stdout)
        admin = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.live_ports()[0])
        masters = {node.name for node in admin.get_primaries()}  # type: ignore[no-untyped-call]
        admin.close()
        assert set(installed["loaded"] + installed["present"]) == masters, installed
    readme = ACL_DOC.read_text()
    additions = re.findall(r"need `([^`]+)`\s+besides\s+the\s+single-server\s+line", readme)
    assert len(additions) == 1, additions
    prefix, user, password = f"acl-{uuid.uuid4().hex[:8]}", f"cl-{uuid.uuid4().hex[:8]}", "pw1"
    line = (
        readme_acl_line(functions)
        .replace("state-adapter", user)
        .replace("<password>", password)
        .replace("~state:*", f"~{prefix}:*")
    )
    for port in redis_cluster.live_ports():
        redis.Redis(port=port).execute_command(*line.split(), *additions[0].split())
    adapter = RedisAdapter(
        redis_url=f"redis+cluster://{user}:{password}@{seeds}",
        key_prefix=prefix,
        use_functions=functions,
    )
    try:
        # Then the adapter connects and its calls pass: changes, reads, every bucket
        scopes = one_scope_per_bucket()[:40]
        adapter.set_versioned("acl-live", "k", "1")  # no ttl: listed whatever the timing
        for scope in scopes:
            adapter.set_versioned(scope, "k", "1", op_id=f"op-{scope}", ttl_ms=50)
        adapter.settle([f"op-{scope}" for scope in scopes])
        assert adapter.get(scopes[0], "k") in ("1", None)
        # (the scopes whose key expired meanwhile are counted by a script, ZMSCORE first)
        listed = dict(adapter.list_groups_page("", None, 1000, with_counts=True)[0])
        assert listed["acl-live"] == 1 and set(listed) <= {"acl-live", *scopes}
        assert adapter.triggers_put("t1", '{"id": "t1"}') and adapter.triggers_load()
        time.sleep(0.2)
        gone = adapter.expire_due(1000)[0]
        assert len(gone) == len(scopes)
        assert len(adapter.pending_expiries(0, 1000)) == len(scopes)
        adapter.expiries_sent(gone)
        assert adapter.pending_expiries(0, 1000) == []
    finally:
        adapter.close()
        for port in redis_cluster.live_ports():
            redis.Redis(port=port).acl_deluser(user)


def test_keys_written_through_the_adapter_are_plain_redis_data(adapter: RedisAdapter) -> None:
    """What docs/adapters.md's key table says, on a cluster: inspect it with redis-cli -c."""
    adapter.set("orders", "o1", '{"total": 3}')
    client: redis.RedisCluster = adapter.client
    tag = adapter.layout.scope_key("orders").split("{")[1].split("}")[0]
    prefix = adapter.key_prefix
    assert adapter.layout.scope_key("orders") == f"{prefix}:s:{{{tag}}}:orders"
    assert client.hget(f"{prefix}:s:{{{tag}}}:orders", "o1") == '{"total": 3}'
    assert client.zrange(f"{prefix}:groups:{{{tag}}}", 0, -1) == ["orders"]
    assert client.zrange(f"{prefix}:k:{{{tag}}}:orders", 0, -1) == ["o1"]
