"""The original engine's user-profile flow, against a running worker.

Start a worker that loads the handlers, then run this::

    PYTHONPATH=examples celery -A state_tasks worker -I profile_handlers
    python examples/user_profile.py

(``./scripts/run-example`` does both on the embedded default.)
"""

import json
import time

from state_tasks import iii


def show(label, value):
    print(f"{label:<28} {json.dumps(value)}")


# -- The seed's flow, as written for the engine --------------------------------------

iii.trigger(
    {
        "function_id": "state::set",
        "payload": {
            "scope": "users",
            "key": "user-123",
            "value": {
                "name": "Alice",
                "email": "alice@example.com",
                "preferences": {"theme": "dark"},
            },
        },
        "action": {"type": "void"},
    }
)

profile = iii.trigger(
    {
        "function_id": "state::get",
        "payload": {"scope": "users", "key": "user-123"},
    }
)
show("get users/user-123:", profile)

iii.trigger(
    {
        "function_id": "state::set",
        "payload": {
            "scope": "users",
            "key": "user-123",
            "value": {
                "name": "Alice",
                "email": "alice@example.com",
                "preferences": {"theme": "light"},
            },
        },
        "action": {"type": "void"},
    }
)

# The set above was 'void' (fire and forget): on a worker with several threads this
# list may run before it, and show the dark theme still. Waiting calls are ordered.
all_users = iii.trigger(
    {
        "function_id": "state::list",
        "payload": {"scope": "users"},
    }
)
show("list users:", all_users)

scopes = iii.trigger(
    {
        "function_id": "state::list_groups",
        "payload": {},
    }
)
show("list_groups:", scopes)

# -- The conditional email trigger: users/profile ------------------------------------


def set_profile(email):
    return iii.trigger(
        {
            "function_id": "state::set",
            "payload": {
                "scope": "users",
                "key": "profile",
                "value": {"name": "Alice", "email": email},
            },
        }
    )


set_profile("alice@example.com")  # created: the condition says no
set_profile("alice@example.com")  # updated, same email: no
set_profile("alice@new.example.com")  # updated, new email: one verification email

# -- What the handlers did (they run on the worker, a moment later) -------------------


def wait_for(scope, key, ready, timeout_s=15.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = iii.trigger({"function_id": "state::get", "payload": {"scope": scope, "key": key}})
        if ready(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


audit = wait_for("audit", "user-123", lambda v: v is not None and v.get("changes") == 2)
show("audit/user-123 (handler):", audit)
outbox = wait_for("outbox", "alice@new.example.com", lambda v: v is not None)
show("outbox (conditional):", outbox)
old_outbox = iii.trigger(
    {"function_id": "state::get", "payload": {"scope": "outbox", "key": "alice@example.com"}}
)
show("outbox for the old email:", old_outbox)

ok = (
    audit == {"changes": 2, "last": "state:updated"}
    and outbox == {"sent": 1}
    and old_outbox is None
)
print("triggers fired as expected" if ok else "UNEXPECTED: triggers did not fire as described")
raise SystemExit(0 if ok else 1)
