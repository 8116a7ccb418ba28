"""A counter with state::update: many increments in flight, none lost.

Against any running worker (the embedded default, or Redis)::

    celery -A state_tasks worker          # in one shell
    python examples/counter.py            # in another, in the same folder
"""

import sys

from state_tasks import IncrementOp, app, ops_json

COUNT = int(sys.argv[1]) if len(sys.argv) > 1 else 200

app.send_task("state::delete", kwargs={"scope": "counters", "key": "visits"}).get(timeout=30)
increment = ops_json(IncrementOp(field="n", by=1))
results = [
    app.send_task("state::update", kwargs={"scope": "counters", "key": "visits", "ops": increment})
    for _ in range(COUNT)
]
seen = sorted(result.get(timeout=120)["new_value"]["n"] for result in results)
final = app.send_task("state::get", kwargs={"scope": "counters", "key": "visits"}).get(timeout=30)
print(
    f"{COUNT} increments sent; every one saw a distinct count: {seen == list(range(1, COUNT + 1))}"
)
print(f"final value: {final}")
raise SystemExit(0 if final == {"n": COUNT} else 1)
