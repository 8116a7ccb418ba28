"""The Redis adapter's expiry: the sweep that removes keys whose time has come, and the
pending expiries whose events are not yet known to be sent.

A key removed because it expired (by the sweep, or by a write that meets it) leaves its
expiry in the pending expiries of its bucket (a hash: pending id -> its JSON text, and a
sorted set: pending id -> claim time), in the same script, until the service says its
event was sent (:meth:`Expiring.expiries_sent`); a later sweep of any worker claims and
sends again those older than its resend delay (:meth:`Expiring.pending_expiries`).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from functools import partial
from typing import Any

from state_tasks.adapters.base import Expired
from state_tasks.adapters.redis.runner import RedisRunner
from state_tasks.adapters.redis.topology import Call

#: Redis Cluster: after an expiry sweep that could not read some buckets (a master down),
#: the next sweep comes within this many milliseconds, whatever the other buckets' due times.
CLUSTER_SWEEP_RETRY_MS = 5000.0


def pending_id(scope: str, key: str, version: int) -> str:
    """A pending expiry's id, as the scripts make it: ``<version>:<bytes of the
    scope>:<scope><key>`` (the length tells the scope from the key)."""
    return f"{version}:{len(scope.encode())}:{scope}{key}"


def pending_expiry(pending: str, text: str) -> Expired:
    """The expiry a pending id and its text stand for."""
    version, size, rest = pending.split(":", 2)
    raw, cut = rest.encode(), int(size)
    return Expired(raw[:cut].decode(), raw[cut:].decode(), text, int(version))


class Expiring(RedisRunner):
    """Expiry of the Redis adapter."""

    def expire_due(self, limit: int) -> tuple[builtins.list[Expired], float | None]:
        """Remove the keys whose due time has come (one script per scope with keys due:
        atomic, so two workers never both get one); return them and the milliseconds
        until the next due time, from the server's clock (on a cluster: the buckets' due
        indexes in one pipeline, each judged by its master's clock)."""
        scopes, next_due_ms = self.run("expire", None, partial(self._due_scopes, limit))
        expire = self.script("expire")
        gone: builtins.list[Expired] = []
        for scope in scopes:
            if len(gone) >= limit:
                return gone, 0.0
            keys = self.mutation_keys(scope, None)
            args = [scope, limit - len(gone), *self.log_args(None)]
            flat = self.run("expire", scope, partial(expire, keys=keys, args=args))
            for at in range(0, len(flat), 3):
                gone.append(Expired(scope, flat[at], flat[at + 1], int(flat[at + 2])))
                self._recent.forget((scope, flat[at]))
        if scopes:
            return gone, 0.0  # look again at once: more may be due, or the next due time moved
        return gone, next_due_ms

    def _due_scopes(self, limit: int) -> tuple[builtins.list[str], float | None]:
        """The scopes whose earliest due time has come (at most ``limit`` per tag), and
        the milliseconds until the next due time known (``None``: none), each bucket
        judged by its own master's clock."""
        calls: builtins.list[Call] = [
            ([self.layout.due_scopes_key(tag)], [limit]) for tag in self.layout.tags
        ]
        scopes: builtins.list[str] = []
        wait_ms: float | None = None
        script = self.script("due_scopes")
        for reply in self._topology.eval_each_node("expiry sweep", script, calls):
            if reply is None:  # its master is down (logged): look again soon
                wait_ms = min(
                    CLUSTER_SWEEP_RETRY_MS,
                    wait_ms if wait_ms is not None else CLUSTER_SWEEP_RETRY_MS,
                )
                continue
            now, due, next_due = reply
            scopes += due
            if next_due:
                left = max(0.0, float(next_due) - float(now))
                wait_ms = left if wait_ms is None else min(wait_ms, left)
        return scopes, wait_ms

    def pending_expiries(self, older_than_ms: int, limit: int) -> builtins.list[Expired]:
        """The expiries handed over at least ``older_than_ms`` ago (by the server's clock)
        whose events are not known to be sent, oldest first, each claimed again in the same
        script. On a cluster: one script per bucket in one pipeline (a round trip per
        master); what the buckets gave beyond ``limit`` is given back (a second pipeline,
        only then)."""
        if limit <= 0:
            return []
        tags = self.layout.tags
        calls: builtins.list[Call] = [
            (
                [self.layout.expiring_key(tag), self.layout.expiring_at_key(tag)],
                [older_than_ms, limit],
            )
            for tag in tags
        ]
        claim = self.script("pending_claim")
        replies = self.run(
            "pending_expiries",
            None,
            partial(self._topology.eval_each_node, "pending expiries", claim, calls),
        )
        # (previous claim time, tag, this claim time, pending id, text)
        found: builtins.list[tuple[int, str, int, str, str]] = []
        for tag, reply in zip(tags, replies, strict=True):
            if reply is None:  # its master is down (logged); the others' claims are kept
                continue
            now = int(reply[0])
            for at in range(1, len(reply), 3):
                found.append((int(float(reply[at + 2])), tag, now, reply[at], reply[at + 1]))
        if len(found) > limit:
            found.sort(key=lambda claimed: claimed[0])
            extra: dict[tuple[str, int], builtins.list[Any]] = {}
            for before, tag, now, pending, _ in found[limit:]:
                extra.setdefault((tag, now), []).extend((pending, before))
            found = found[:limit]
            give_back: builtins.list[Call] = [
                ([self.layout.expiring_at_key(tag)], [now, *args])
                for (tag, now), args in extra.items()
            ]
            self.eval_each("pending_expiries", "pending_release", give_back)
        elif len(tags) > 1:
            found.sort(key=lambda claimed: claimed[0])
        return [pending_expiry(pending, text) for _, _, _, pending, text in found]

    def expiries_sent(self, expired: Sequence[Expired]) -> None:
        """Drop the pending records of these expiries (one script per tag: on a cluster,
        per bucket, in one pipeline)."""
        by_tag: dict[str, builtins.list[Any]] = {}
        for gone in expired:
            by_tag.setdefault(self.layout.tag(gone.scope), []).append(
                pending_id(gone.scope, gone.key, gone.version)
            )
        calls: builtins.list[Call] = [
            ([self.layout.expiring_key(tag), self.layout.expiring_at_key(tag)], ids)
            for tag, ids in by_tag.items()
        ]
        if calls:
            self.eval_each("expiries_sent", "expiries_sent", calls)
