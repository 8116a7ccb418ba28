"""The Redis adapter's reads: one key, many keys, a scope, pages, and the scopes in use.

A key whose due time has passed is absent to every read even before the sweep removes
it: the read scripts judge it by the server's clock (``lua/lib_read.lua``).
"""

from __future__ import annotations

import builtins
import heapq
from collections.abc import Sequence
from functools import partial
from typing import Any, cast

from state_tasks.adapters.base import Entry
from state_tasks.adapters.redis.runner import RedisRunner
from state_tasks.adapters.redis.topology import Call


class Listing(RedisRunner):
    """Reads of the Redis adapter."""

    def get(self, scope: str, key: str) -> str | None:
        script = self.script("get")
        keys = self.layout.read_keys(scope)
        return cast(
            "str | None", self.run("get", scope, lambda: script(keys=keys, args=[key])) or None
        )

    def get_entry(self, scope: str, key: str) -> Entry | None:
        script = self.script("get_entry")
        keys = self.layout.read_keys(scope)
        found = self.run("get", scope, lambda: script(keys=keys, args=[key]))
        if not found:
            return None
        text, version, left = found
        return Entry(text, int(version), None if int(left) < 0 else int(left))

    def get_many(self, scope: str, keys: Sequence[str]) -> builtins.list[str | None]:
        script = self.script("get_many")
        names = self.layout.read_keys(scope)
        found = self.run("get_many", scope, lambda: script(keys=names, args=list(keys)))
        return [text or None for text in found]

    def list(self, scope: str) -> builtins.list[str]:
        script = self.script("list")
        keys = self.layout.read_keys(scope)
        return cast("list[str]", self.run("list", scope, lambda: script(keys=keys, args=[])))

    def list_page(
        self, scope: str, prefix: str, after: str | None, limit: int
    ) -> tuple[builtins.list[tuple[str, str]], bool]:
        script = self.script("page")
        layout = self.layout
        keys = [
            layout.scope_key(scope, "s"),
            layout.scope_key(scope, "k"),
            layout.scope_key(scope, "x"),
        ]
        rows: list[tuple[str, str]] = []
        while True:  # expired keys not yet removed are skipped, not counted
            wanted = limit - len(rows)
            args = [prefix, after or "", "0" if after is None else "1", wanted + 1]
            found, texts = self.run("list", scope, partial(script, keys=keys, args=args))
            rows += [(k, t) for k, t in zip(found[:wanted], texts, strict=False) if t]
            more = len(found) > wanted
            if not more or len(rows) == limit:
                return rows, more
            after = found[wanted - 1]

    def list_groups_page(
        self, prefix: str, after: str | None, limit: int, with_counts: bool
    ) -> tuple[builtins.list[tuple[str, int | None]], bool]:
        """A page of the groups index: ``ZRANGEBYLEX`` after the cursor. On a cluster each
        bucket's index gives its first ``limit + 1`` (one pipeline: a round trip per
        master) and the merge keeps the first ``limit + 1`` of them all."""
        rows: list[tuple[str, int | None]] = []
        while True:  # a scope whose keys all expired (not yet swept) is skipped
            # Bytes, not str: the upper bound ends in the byte 0xFF, which no UTF-8 text holds.
            low = b"(" + after.encode() if after is not None else b"[" + prefix.encode()
            high = b"[" + prefix.encode() + b"\xff" if prefix else b"+"
            wanted = limit - len(rows)
            found = self.run(
                "list_groups",
                None,
                partial(self._groups_range, "ZRANGEBYLEX", low, high, "LIMIT", 0, wanted + 1),
            )[: wanted + 1]
            more, scopes = len(found) > wanted, found[:wanted]
            counts = self.run("list_groups", None, partial(self._live_counts, scopes))
            if with_counts and -1 in counts:
                pipe = self.client.pipeline(transaction=False)
                for scope, count in zip(scopes, counts, strict=True):
                    if count == -1:
                        pipe.hlen(self.layout.scope_key(scope))
                lengths = iter(self.run("list_groups", None, pipe.execute))
                counts = [next(lengths) if count == -1 else count for count in counts]
            rows += [
                (scope, count if with_counts else None)
                for scope, count in zip(scopes, counts, strict=True)
                if count != 0
            ]
            if not more or len(rows) == limit:
                return rows, more
            after = scopes[-1]

    def list_groups(self) -> builtins.list[str]:
        groups = self.run("list_groups", None, partial(self._groups_range, "ZRANGE", 0, -1))
        counts = self.run("list_groups", None, partial(self._live_counts, groups))
        return [scope for scope, count in zip(groups, counts, strict=True) if count != 0]

    def _groups_range(self, command: str, *args: Any) -> builtins.list[str]:
        """``command`` (a range of a sorted set) on every groups index, merged in order.

        Every scope is in one bucket only, and each bucket's answer is sorted by bytes, as
        Python sorts str (code point order is UTF-8 byte order)."""
        tags = self.layout.tags
        if len(tags) == 1:
            return cast(
                "list[str]",
                self.client.execute_command(command, self.layout.groups_key(tags[0]), *args),
            )
        pipe = self.client.pipeline(transaction=False)
        for tag in tags:
            pipe.execute_command(command, self.layout.groups_key(tag), *args)
        return list(heapq.merge(*pipe.execute()))

    def _live_counts(self, scopes: Sequence[str]) -> builtins.list[int]:
        """How many live keys each of ``scopes`` holds where some may have expired (0: all
        did, not yet swept), else -1 (none expired, and it holds at least one). A look at
        the due indexes of the scopes' buckets (one pipeline), then, for the scopes filed
        there (those with keys that expire), one script per bucket and 1,000 scopes."""
        by_tag: dict[str, list[int]] = {}
        for at, scope in enumerate(scopes):
            by_tag.setdefault(self.layout.tag(scope), []).append(at)
        chunks = [
            (tag, ats[first : first + 1000])
            for tag, ats in by_tag.items()
            for first in range(0, len(ats), 1000)
        ]
        counts = [-1] * len(scopes)
        if not chunks:
            return counts
        pipe = self.client.pipeline(transaction=False)
        for tag, part in chunks:
            pipe.zmscore(self.layout.due_scopes_key(tag), [scopes[at] for at in part])
        calls: list[Call] = []
        placed: list[list[int]] = []
        for (tag, part), dues in zip(chunks, pipe.execute(), strict=True):
            filed = [at for at, due in zip(part, dues, strict=True) if due is not None]
            if filed:
                keys = [self.layout.due_scopes_key(tag)]
                for at in filed:
                    keys += [
                        self.layout.scope_key(scopes[at]),
                        self.layout.scope_key(scopes[at], "x"),
                    ]
                calls.append((keys, [scopes[at] for at in filed]))
                placed.append(filed)
        script = self.script("live_counts")
        for filed, reply in zip(placed, self._topology.eval_each(script, calls), strict=True):
            for at, count in zip(filed, reply, strict=True):
                counts[at] = int(count)
        return counts
