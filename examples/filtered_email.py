"""The conditional trigger with a declarative filter instead of a condition function.

``examples/profile_handlers.py`` registers ``state::onEmailChangeFiltered`` with
``when: {"all": [{"event_types": ["state:updated"]}, {"changed": ["email"]}]}``: the same
decision as ``conditions::emailChanged``, taken by the worker that applied the change,
with no condition task::

    PYTHONPATH=examples celery -A state_tasks worker -I profile_handlers
    python examples/filtered_email.py
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
        {"function_id": "state::get", "payload": {"scope": "outbox-filtered", "key": address}}
    )
    return 0 if value is None else value["sent"]


(trigger,) = [t for t in iii.list_triggers() if t["function_id"] == "state::onEmailChangeFiltered"]
print("the trigger:", trigger["config"])

iii.trigger({"function_id": "state::delete", "payload": {"scope": "users", "key": "profile"}})
before = sent_to("bo@new.example.com")
set_profile("bo@example.com")  # created: the filter does not pass, nothing is sent
set_profile("bo@example.com")  # updated, same email: nothing is sent
set_profile("bo@new.example.com")  # updated, new email: the handler runs

deadline = time.monotonic() + 15
while sent_to("bo@new.example.com") == before and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.5)  # would a second (wrong) email arrive?
sent = sent_to("bo@new.example.com") - before
print(f"verification emails sent for the new address: {sent}")
print(f"for the old address: {sent_to('bo@example.com')}")
raise SystemExit(0 if sent == 1 else 1)
