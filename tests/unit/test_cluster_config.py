"""Redis Cluster without a server: the URL forms and their errors, redaction, and the
bucketed key layout (every key of a scope's mutation in one slot, buckets spread evenly)."""

from __future__ import annotations

import logging
import ssl
from collections import Counter
from typing import Any

import pytest
import redis
import redis.cluster
from redis.exceptions import RedisClusterException

from state_tasks.adapters.redis import RedisAdapter
from state_tasks.adapters.redis.layout import (
    CLUSTER_BUCKETS,
    CLUSTER_SLOTS,
    BucketLayout,
    bucket_of,
    bucket_tags,
    key_slot,
)
from state_tasks.config import parse_config
from state_tasks.core.cluster import ClusterTarget, parse_cluster_url
from state_tasks.core.errors import AdapterError, AdapterUnavailable, ConfigError
from state_tasks.core.urls import redact_url


def slot(key: str) -> int:
    """Redis Cluster's slot of a key: its hash tag's, if it has one."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key_slot(key[start + 1 : end] if start >= 0 and end > start + 1 else key)


@pytest.mark.parametrize(
    ("url", "target"),
    [
        (
            "redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:7001,10.0.0.3",
            ClusterTarget(
                (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 6379)), None, "s3cret"
            ),
        ),
        (
            "rediss+cluster://app:pw@node-a:7000/0",
            ClusterTarget((("node-a", 7000),), "app", "pw", tls=True),
        ),
        ("redis://h:7000", ClusterTarget((("h", 7000),))),  # with cluster: true
    ],
)
def test_a_cluster_url_names_its_seeds_and_login(url: str, target: ClusterTarget) -> None:
    assert parse_cluster_url(url) == target


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://:s3cret@h:7000/2", r"only db 0 \(got /2\)"),
        ("redis+cluster://:s3cret@", "names no seed"),
        ("redis+cluster://:s3cret@h:port", "seed 'h:port'"),
        ("sentinel://:s3cret@h:26379", "must start with redis\\+cluster://"),
    ],
)
def test_a_bad_cluster_url_is_a_config_error_without_its_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_cluster_url(url)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        # an unencoded '/', '?' or '#' in the password ends the hosts in a URL
        ("redis+cluster://:Zq7/Xk9@a:1", "login has a '/', '\\?' or '#'"),
        ("redis+cluster://:Zq7?Xk9@a:1", "login has a '/', '\\?' or '#'"),
        ("redis+cluster://:Zq7#Xk9@a:1,b:2", "login has a '/', '\\?' or '#'"),
        ("redis+cluster://u:Zq7@a:1,b:2/Xk9", "path after the hosts that is not a db number"),
        # a query on the last seed would be dropped: refused
        ("redis+cluster://:Zq7@a:1,b:2?password=Xk9", "options after '\\?'"),
        ("rediss+cluster://:Zq7@a:1,b:2?ssl_cert_reqs=Xk9", "options after '\\?'"),
        ("redis+cluster://:Zq7@a:1,b:2#Xk9", "options after '\\?'"),
        ("redis://:Zq7@a:1/?password=Xk9", "options after '\\?'"),
    ],
)
def test_no_part_of_a_secret_is_shown_and_the_hosts_are(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_cluster_url(url)
    shown = str(caught.value)
    assert "Zq7" not in shown and "Xk9" not in shown, shown
    assert "a:1" in shown
    assert "Zq7" not in redact_url(url)
    if "Xk9@" in url:  # the login's second half is no path: redact_url drops it too
        assert "Xk9" not in redact_url(url) and "a:1" in redact_url(url)


def test_a_percent_encoded_password_and_db_0_are_read() -> None:
    assert parse_cluster_url("redis+cluster://:p%2Fa%3Fs%23s@a:1,b:2/0") == ClusterTarget(
        (("a", 1), ("b", 2)), None, "p/a?s#s"
    )
    assert redact_url("redis://:12/Xk9@a:1") == "redis://:***@a:1"


def test_the_adapter_takes_a_cluster_url_or_cluster_true_and_never_shows_the_password() -> None:
    by_url = RedisAdapter(redis_url="redis+cluster://:s3cret@127.0.0.1:1,127.0.0.1:2")
    by_flag = RedisAdapter(redis_url="redis://:s3cret@127.0.0.1:1", cluster=True)
    assert by_url.is_cluster and by_flag.is_cluster
    assert not RedisAdapter(redis_url="redis://127.0.0.1:1").is_cluster
    assert "s3cret" not in repr(by_url) + repr(by_flag) + by_url.safe_url
    assert by_url.safe_url == "redis+cluster://:***@127.0.0.1:1,127.0.0.1:2"
    assert redact_url("rediss+cluster://u:p@a:1,b:2/0") == "rediss+cluster://u:***@a:1,b:2/0"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"redis_url": "redis://:s3cret@h:7000/3", "cluster": True}, "only db 0"),
        ({"redis_url": "redis+cluster://:s3cret@h:7000/1"}, "only db 0"),
        ({"redis_url": "unix:///tmp/redis.sock", "cluster": True}, "cluster: true needs"),
        (
            {"redis_url": "redis+cluster://:s3cret@h:7000", "master_name": "m"},
            "needs a sentinel:// redis_url",
        ),
        (
            {"redis_url": "redis+cluster://:s3cret@h:7000", "ssl_ca_certs": "/ca.pem"},
            "ssl_\\* options need a rediss://",
        ),
    ],
)
def test_cluster_settings_that_cannot_work_are_refused(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        RedisAdapter(**settings)
    assert "s3cret" not in str(caught.value)


def test_state_yaml_selects_the_cluster_by_scheme_or_by_cluster_true() -> None:
    def build(config: dict[str, object]) -> Any:
        document = [
            {
                "class": "modules::state::StateModule",
                "config": {"adapter": {"class": "redis", "config": config}},
            }
        ]
        return parse_config(document, "state.yaml").build_adapter()

    assert build({"redis_url": "redis+cluster://h:7000,h:7001", "wait_replicas": 1}).is_cluster
    assert build({"redis_url": "redis://h:7000", "cluster": True}).is_cluster
    assert not build({"redis_url": "redis://h:7000"}).is_cluster
    with pytest.raises(ConfigError, match="only db 0"):
        build({"redis_url": "redis://h:7000/5", "cluster": True})


def test_every_key_a_mutation_touches_is_in_the_scopes_bucket_slot() -> None:
    adapter = RedisAdapter(redis_url="redis+cluster://127.0.0.1:1", key_prefix="state")
    for scope in ("users", "a:b", "{x}", "}", "%7B", "日本", ""):
        keys = adapter.layout.mutation_keys(scope, "op-1")
        assert len({slot(key) for key in keys}) == 1, (scope, keys)
        assert {slot(key) for key in adapter.layout.read_keys(scope)} == {slot(keys[0])}
    # and distinct scopes never share a key
    assert adapter.layout.scope_key("a}") != adapter.layout.scope_key("a%7D")
    assert (
        adapter.layout.scope_key("users")
        == f"state:s:{{{bucket_tags()[bucket_of('users')]}}}:users"
    )


def test_the_buckets_are_fixed_and_spread_evenly_over_the_slots() -> None:
    tags = bucket_tags()
    band = CLUSTER_SLOTS // CLUSTER_BUCKETS
    assert len(set(tags)) == CLUSTER_BUCKETS
    assert [key_slot(tag) // band for tag in tags] == list(range(CLUSTER_BUCKETS))
    # fixed forever: stored scopes are found by these names
    assert tags[:3] == ("b0-376", "b1-4", "b2-266") and bucket_of("users") == 233
    # three masters with redis-cli's equal slot ranges hold 85 or 86 buckets each
    ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
    held = Counter(
        next(i for i, (lo, hi) in enumerate(ranges) if lo <= key_slot(t) <= hi) for t in tags
    )
    assert sorted(held.values()) == [85, 85, 86]
    # and scopes spread over the buckets
    scopes = Counter(bucket_of(f"scope-{i}") for i in range(25_600))
    assert len(scopes) == CLUSTER_BUCKETS and max(scopes.values()) < 160


def test_the_triggers_live_in_a_slot_of_their_own_with_their_counter() -> None:
    layout = BucketLayout("state")
    assert slot(layout.triggers_key) == slot(layout.triggers_version_key)
    assert len({slot(layout.version_key(tag)) for tag in layout.tags}) == CLUSTER_BUCKETS


def test_only_connectivity_errors_of_the_cluster_client_are_unavailable() -> None:
    from state_tasks.adapters.redis.connection import is_unavailable

    unreachable = RedisClusterException(
        "Redis Cluster cannot be connected. Please provide at least one reachable node: x"
    )
    assert is_unavailable(unreachable)
    assert is_unavailable(redis.exceptions.SlotNotCoveredError("slot 7 not covered"))
    assert is_unavailable(redis.exceptions.MovedError("7 127.0.0.1:7001"))
    assert is_unavailable(redis.exceptions.ClusterError("TTL exhausted."))
    # a misuse of the client would fail the same on every retry
    assert not is_unavailable(RedisClusterException("MGET - all keys must map to the same slot"))
    assert not is_unavailable(RedisClusterException("No way to dispatch... Missing key."))


def test_a_cross_slot_call_is_an_adapter_error_not_unavailable() -> None:
    adapter = RedisAdapter(redis_url="redis+cluster://127.0.0.1:1")

    def cross_slot() -> None:
        raise RedisClusterException("EVALSHA - all keys must map to the same key slot")

    with pytest.raises(AdapterError, match="all keys must map") as caught:
        adapter.run("reading", "users", cross_slot)
    assert not isinstance(caught.value, AdapterUnavailable)


def _refused_by_tls() -> RedisClusterException:
    """What redis-py raises when no seed's certificate verifies: the cluster error, caused
    by the last seed's ConnectionError, raised while handling the SSL error."""
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "self-signed certificate"
    try:
        try:
            raise verify
        except ssl.SSLError as e:
            raise redis.ConnectionError(f"Error connecting to 127.0.0.1:7000. {e}") from None
    except redis.ConnectionError as last:
        try:
            raise RedisClusterException(
                "Redis Cluster cannot be connected. Please provide at least one reachable "
                f"node: {last}"
            ) from last
        except RedisClusterException as e:
            return e


def test_a_cluster_certificate_that_does_not_verify_is_an_error_not_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise _refused_by_tls()

    monkeypatch.setattr(redis.cluster, "RedisCluster", refuse)
    adapter = RedisAdapter(redis_url="rediss+cluster://:s3cret@127.0.0.1:7000,127.0.0.1:7001")
    with pytest.raises(AdapterError, match="certificate does not verify") as caught:
        adapter.get("users", "u1")
    assert not isinstance(caught.value, AdapterUnavailable)
    assert "ssl_ca_certs" in str(caught.value) and "s3cret" not in str(caught.value)
    # and a cluster no seed of which answers is still unavailable
    unreachable = RedisClusterException("Redis Cluster cannot be connected. Please provide")

    def unreachable_cluster(*args: Any, **kwargs: Any) -> None:
        raise unreachable

    monkeypatch.setattr(redis.cluster, "RedisCluster", unreachable_cluster)
    with pytest.raises(AdapterUnavailable, match="no seed node answered"):
        RedisAdapter(redis_url="redis+cluster://127.0.0.1:7000").get("users", "u1")


def test_settling_an_operation_the_process_forgot_is_logged_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    adapter = RedisAdapter(redis_url="redis+cluster://:s3cret@127.0.0.1:1")
    adapter._topology._op_keys["known"] = ("b0-376", "state:op:{b0-376}:known")
    with caplog.at_level(logging.WARNING, logger="state_tasks.adapters.redis"):
        adapter.settle(["known", "evicted-1", "evicted-2"])
        adapter.settle(["evicted-3"])
    warned = [r.getMessage() for r in caplog.records if "not settled" in r.getMessage()]
    assert len(warned) == 1 and ": 2 operation records not settled" in warned[0]
    assert "stay whole until they expire" in warned[0] and "s3cret" not in warned[0]
    assert adapter._to_settle == {"b0-376": ["state:op:{b0-376}:known"]}
    # a minute later, the ones since are counted
    adapter._forgotten_logged_at -= 61
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="state_tasks.adapters.redis"):
        adapter.settle(["evicted-4"])
    warned = [r.getMessage() for r in caplog.records if "not settled" in r.getMessage()]
    assert len(warned) == 1 and ": 2 operation records not settled" in warned[0]
