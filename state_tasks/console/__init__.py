"""``state-tasks console``: the state of a deployment in the browser.

Scopes with their key counts, a scope's keys and values (paged, never the whole scope),
editing (only with ``--allow-writes``), triggers, and the changes as they happen. The
console is a client of the deployment like the CLI: every read and write is a state
function sent through the broker (:mod:`state_tasks.console.gateway`), so it works with
every adapter, a KvStore living inside a worker included. The live feed reads the
deployment's change log (``state::changes``) the same way, and resumes from its cursor
(:mod:`state_tasks.console.changes`). The workers' task events give the triggers' runs and
failures (:mod:`state_tasks.console.workers`); who may sign in, with what, and how large a
request body may be is :mod:`state_tasks.console.guard`.

Optional: ``pip install "state_tasks[console]"`` (Starlette and uvicorn). The modules
that need them are :mod:`state_tasks.console.app` and :mod:`state_tasks.console.server`;
:mod:`state_tasks.console.guard`, :mod:`state_tasks.console.changes`,
:mod:`state_tasks.console.workers` and :mod:`state_tasks.console.values` need neither.
"""

from __future__ import annotations

#: The install line shown when the extra is missing.
INSTALL_HINT = 'pip install "state_tasks[console]"'
#: Where the console listens unless told otherwise (the CLI's defaults: this module imports
#: nothing, so ``state-tasks --help`` needs no console extra).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
#: Seconds a console call may take before the page is told that no worker answered.
DEFAULT_CALL_TIMEOUT_S = 10.0
