"""RedisAdapter: one state shared by any number of workers, atomic and exact.

The package, one concern a module:

- :mod:`.adapter`: the adapter and its writes (set, delete, update, batch, triggers);
- :mod:`.listing`: its reads (get, get_many, pages, the scopes in use);
- :mod:`.expiring`: the expiry sweep and the pending expiries;
- :mod:`.runner`: the client, the scripts, the errors made ours, settling records;
- :mod:`.connection`: the URL, TLS and Sentinel, checked, and the client they make;
- :mod:`.topology`: what differs on a Redis Cluster;
- :mod:`.settings`: its options, checked once for ``state.yaml`` and the constructor;
- :mod:`.layout`: the key names, and which each script is given;
- :mod:`.scripts` and ``lua/``: the Lua, one file a script, with :mod:`.replies`, the reply
  codes Python and Lua share;
- :mod:`.recent`: the values a process last wrote, which save an update's first read.
"""

from state_tasks.adapters.redis.adapter import RedisAdapter
from state_tasks.adapters.redis.connection import DEFAULT_REDIS_URL
from state_tasks.adapters.redis.settings import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_WAIT_TIMEOUT_MS,
    RedisSettings,
)

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_REDIS_URL",
    "DEFAULT_WAIT_TIMEOUT_MS",
    "RedisAdapter",
    "RedisSettings",
]
