"""Two deployments on one Redis, each with its own key prefix and its own restricted user
(the ``ACL SETUSER`` line of docs/security.md): neither sees the other's state or triggers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from helpers import Deployment, RedisServer, own_db, redis_state_yaml, wait_until
from redis_acl import make_restricted_user

pytestmark = pytest.mark.integration


def team(redis_server: RedisServer, tmp_path: Path, prefix: str, record_db: int) -> Deployment:
    url = make_restricted_user(redis_server, prefix)
    deployment = Deployment(redis_server, tmp_path / prefix, redis_state_yaml(url, prefix))
    record_url = redis_server.url(record_db)
    redis.Redis.from_url(record_url).flushdb()
    deployment.worker(includes=("trigger_handlers",), RECORD_REDIS_URL=record_url)
    return deployment


def records(redis_server: RedisServer, db: int, name: str) -> list[dict[str, object]]:
    client = redis.Redis.from_url(redis_server.url(db))
    return [json.loads(item) for item in client.lrange(f"record:{name}", 0, -1)]


def test_two_prefixes_on_one_redis_see_neither_state_nor_triggers_of_the_other(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given team A and team B, each a worker whose adapter is its own restricted user
    a_db, b_db = own_db(), own_db()
    a = team(redis_server, tmp_path, "team-a", a_db)
    b = team(redis_server, tmp_path, "team-b", b_db)
    try:
        # And a trigger on the scope "shared" that only team A registers
        a.client.iii.register_trigger(
            {"type": "state", "function_id": "test::onAny", "config": {"scope": "shared"}}
        )
        # When both write the same scope and key
        a.call("state::set", scope="shared", key="k", value={"from": "a"})
        b.call("state::set", scope="shared", key="k", value={"from": "b"})
        b.call("state::set", scope="only-b", key="k", value=1)
        # (B's sentinel: a trigger both declare, fired after B's change of "shared")
        b.call("state::set", scope="decorated", key="k", value="sentinel")
        wait_until(lambda: records(redis_server, b_db, "decorated"), 20, "B's sentinel handler")
        wait_until(lambda: records(redis_server, a_db, "any"), 20, "A's handler")
        # Then each reads its own value, lists its own scopes, and knows its own triggers
        assert a.call("state::get", scope="shared", key="k") == {"from": "a"}
        assert b.call("state::get", scope="shared", key="k") == {"from": "b"}
        assert a.call("state::list_groups") == {"groups": ["shared"]}
        assert b.call("state::list_groups") == {"groups": ["decorated", "only-b", "shared"]}
        assert any(t["function_id"] == "test::onAny" for t in a.client.iii.list_triggers())
        assert not any(t["function_id"] == "test::onAny" for t in b.client.iii.list_triggers())
        # And A's trigger fired for A's change only
        fired = records(redis_server, a_db, "any")
        assert [event["new_value"] for event in fired] == [{"from": "a"}]
        assert records(redis_server, b_db, "any") == []
        # And no worker met a permission error
        for worker in a.workers + b.workers:
            assert "NOPERM" not in worker.log() and "no permissions" not in worker.log()
    finally:
        a.close()
        b.close()
