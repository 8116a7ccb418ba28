"""Where the RedisAdapter keeps what: the key names, on one server and on a Redis Cluster,
and which of them each script is given.

One server (and Sentinel)::

    {prefix}:s:{<scope>}   {prefix}:k:{<scope>}   {prefix}:v:{<scope>}   {prefix}:x:{<scope>}
    {prefix}:groups        {prefix}:due           {prefix}:triggers:version
    {prefix}:op:<op id>    {prefix}:triggers
    {prefix}:expiring      {prefix}:expiring:at   (pending expiries: id -> text, claim time)
    {prefix}:log           (the change log: a stream)

A mutation script touches a scope's four keys *and* the groups index, the due index, the
trigger version, an operation record and the pending expiries (a write that meets an
expired key removes it and records its expiry, pending until its event is sent). On one
server that is fine; a cluster refuses a script whose keys are in different slots
(``CROSSSLOT``), and one groups index would be one hot key on one master. So on a cluster
every scope belongs to one of :data:`CLUSTER_BUCKETS` buckets (by a CRC-32 of its name),
and every key a mutation touches carries its bucket's hash tag::

    {prefix}:s:{<bucket>}:<scope>   {prefix}:k:{<bucket>}:<scope>   (and :v:, :x:)
    {prefix}:groups:{<bucket>}      {prefix}:due:{<bucket>}
    {prefix}:triggers:version:{<bucket>}   {prefix}:op:{<bucket>}:<op id>
    {prefix}:expiring:{<bucket>}    {prefix}:expiring:at:{<bucket>}
    {prefix}:log:{<bucket>}         (the bucket's change log)
    {prefix}:triggers:{t}           {prefix}:triggers:version:{t}   (the triggers' own slot)

so one script is one slot, and the indexes are spread over every master. The bucket tags
are strings whose slots fall in 256 evenly spaced bands of 64 slots (bucket ``i`` in
slots ``64 i .. 64 i + 63``): with the slot ranges ``redis-cli --cluster create`` assigns
(contiguous, equal), each master holds the same number of buckets, give or take one.

The number of buckets and their tags are **fixed forever** for a deployment: a scope's
keys are found by its bucket, so changing either would hide every stored scope. 256 is
enough to spread over any cluster up to a few hundred masters, and small enough that
reading every bucket (``list_groups``, the expiry sweep and its pending expiries,
registering a trigger) is one pipelined round trip per master carrying 256 small commands.
"""

from __future__ import annotations

import binascii
import functools
import zlib

#: How many buckets a cluster deployment's scopes are spread over. Fixed forever: see above.
CLUSTER_BUCKETS = 256
#: Redis Cluster's hash slots.
CLUSTER_SLOTS = 16384
#: The hash tag of the triggers hash and its version counter on a cluster.
TRIGGERS_TAG = "t"


def key_slot(tag: str) -> int:
    """The cluster slot of a key whose hash tag is ``tag`` (CRC16/XMODEM, as Redis)."""
    return binascii.crc_hqx(tag.encode(), 0) % CLUSTER_SLOTS


@functools.cache
def bucket_tags() -> tuple[str, ...]:
    """The hash tag of each bucket: ``b<i>-<n>`` with the first ``n`` from 0 whose slot is
    in bucket ``i``'s band of ``CLUSTER_SLOTS / CLUSTER_BUCKETS`` slots (computed once,
    about 50,000 CRCs; the same on every machine and release)."""
    band = CLUSTER_SLOTS // CLUSTER_BUCKETS
    tags = []
    for bucket in range(CLUSTER_BUCKETS):
        n = 0
        while key_slot(f"b{bucket}-{n}") // band != bucket:
            n += 1
        tags.append(f"b{bucket}-{n}")
    return tuple(tags)


def bucket_of(scope: str) -> int:
    """The bucket of a scope: CRC-32 of its UTF-8 name, modulo :data:`CLUSTER_BUCKETS`."""
    return zlib.crc32(scope.encode("utf-8", "surrogatepass")) % CLUSTER_BUCKETS


def _escape(scope: str) -> str:
    return scope.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


class KeyLayout:
    """The single-server layout. A *tag* names a group of keys that one script may touch
    together besides the scope's own: ``""`` on one server (everything), a bucket's hash
    tag on a cluster."""

    cluster = False

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.triggers_key = f"{prefix}:triggers"
        #: The counter every trigger change bumps (on a cluster, copied to every bucket).
        self.triggers_version_key = f"{prefix}:triggers:version"

    @property
    def tags(self) -> tuple[str, ...]:
        """Every tag, each once (what a walk over the whole state visits)."""
        return ("",)

    def tag(self, scope: str) -> str:
        return ""

    def scope_key(self, scope: str, kind: str = "s") -> str:
        """A key of the scope's own: ``s`` hash, ``k`` key index, ``v`` versions, ``x`` due."""
        return f"{self.prefix}:{kind}:{{{_escape(scope)}}}"

    def groups_key(self, tag: str) -> str:
        return f"{self.prefix}:groups"

    def due_scopes_key(self, tag: str) -> str:
        return f"{self.prefix}:due"

    def version_key(self, tag: str) -> str:
        return self.triggers_version_key

    def op_key(self, op_id: str, tag: str) -> str:
        return f"{self.prefix}:op:{op_id}"

    def expiring_key(self, tag: str) -> str:
        """The pending expiries: a hash, pending id -> the expired key's JSON text."""
        return f"{self.prefix}:expiring"

    def expiring_at_key(self, tag: str) -> str:
        """The pending expiries by claim time: a sorted set, pending id -> ms of the
        server's clock when the expiry was handed over (or last claimed again)."""
        return f"{self.prefix}:expiring:at"

    def log_key(self, tag: str) -> str:
        """The change log: a stream of the changes of every scope (on a cluster, of the
        bucket's scopes), in the order they were applied."""
        return f"{self.prefix}:log"

    def log_gaps_key(self, tag: str) -> str:
        """How many changes were made with the change log off (a counter)."""
        return f"{self.prefix}:log:gaps"

    # -- the KEYS of the scripts (named in lua/lib_mutation_keys.lua, lua/lib_read_keys.lua)

    def mutation_keys(self, scope: str, op_id: str | None) -> list[str]:
        """KEYS[1..11] of a script that changes ``scope``: its hash, its bucket's groups
        index and copy of the trigger version, the operation's record, its key index,
        versions and due index, its bucket's due scopes, pending expiries and change
        log."""
        keys = list(self._scope_keys(scope))
        keys[3] = self.op_key(op_id or "", self.tag(scope))
        return keys

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one layout per adapter, kept for its life
    def _scope_keys(self, scope: str) -> tuple[str, ...]:
        """The keys :meth:`mutation_keys` gives ``scope`` (the op record's left empty):
        made once for the scopes in use, since every write of a scope names the same."""
        tag = self.tag(scope)
        return (
            self.scope_key(scope, "s"),
            self.groups_key(tag),
            self.version_key(tag),
            "",
            self.scope_key(scope, "k"),
            self.scope_key(scope, "v"),
            self.scope_key(scope, "x"),
            self.due_scopes_key(tag),
            self.expiring_key(tag),
            self.expiring_at_key(tag),
            self.log_key(tag),
        )

    def read_keys(self, scope: str) -> list[str]:
        """KEYS of a read of ``scope``: its hash, versions and due index."""
        return [self.scope_key(scope, "s"), self.scope_key(scope, "v"), self.scope_key(scope, "x")]


class BucketLayout(KeyLayout):
    """The Redis Cluster layout: every scope in one of :data:`CLUSTER_BUCKETS` buckets."""

    cluster = True

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self.triggers_key = f"{prefix}:triggers:{{{TRIGGERS_TAG}}}"
        self.triggers_version_key = f"{prefix}:triggers:version:{{{TRIGGERS_TAG}}}"
        self._tags = bucket_tags()

    @property
    def tags(self) -> tuple[str, ...]:
        return self._tags

    def tag(self, scope: str) -> str:
        return self._tags[bucket_of(scope)]

    def scope_key(self, scope: str, kind: str = "s") -> str:
        return f"{self.prefix}:{kind}:{{{self.tag(scope)}}}:{_escape(scope)}"

    def groups_key(self, tag: str) -> str:
        return f"{self.prefix}:groups:{{{tag}}}"

    def due_scopes_key(self, tag: str) -> str:
        return f"{self.prefix}:due:{{{tag}}}"

    def version_key(self, tag: str) -> str:
        return f"{self.prefix}:triggers:version:{{{tag}}}"

    def op_key(self, op_id: str, tag: str) -> str:
        return f"{self.prefix}:op:{{{tag}}}:{op_id}"

    def expiring_key(self, tag: str) -> str:
        return f"{self.prefix}:expiring:{{{tag}}}"

    def expiring_at_key(self, tag: str) -> str:
        return f"{self.prefix}:expiring:at:{{{tag}}}"

    def log_key(self, tag: str) -> str:
        return f"{self.prefix}:log:{{{tag}}}"

    def log_gaps_key(self, tag: str) -> str:
        return f"{self.prefix}:log:gaps:{{{tag}}}"
