"""The engine's conditional trigger: a verification email only when the email changes.

The condition and handler are in examples/profile_handlers.py, which the worker loads::

    PYTHONPATH=examples celery -A state_tasks worker -I profile_handlers
    python examples/conditional_email.py
"""

import time

from state_tasks import iii


def set_profile(email):
    iii.trigger(
        {
            "function_id": "state::set",
            "payload": {
                "scope": "users",
                "key": "profile",
                "value": {"name": "Bo", "email": email},
            },
        }
    )


def sent_to(address):
    value = iii.trigger(
        {"function_id": "state::get", "payload": {"scope": "outbox", "key": address}}
    )
    return 0 if value is None else value["sent"]


iii.trigger({"function_id": "state::delete", "payload": {"scope": "users", "key": "profile"}})
before = sent_to("bo@new.example.com")
set_profile("bo@example.com")  # created: the condition returns False
set_profile("bo@example.com")  # updated, same email: False
set_profile("bo@new.example.com")  # updated, new email: True -> on_email_change runs

deadline = time.monotonic() + 15
while sent_to("bo@new.example.com") == before and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.5)  # would a second (wrong) email arrive?
sent = sent_to("bo@new.example.com") - before
print(f"verification emails sent for the new address: {sent}")
print(f"for the old address: {sent_to('bo@example.com')}")
raise SystemExit(0 if sent == 1 else 1)
