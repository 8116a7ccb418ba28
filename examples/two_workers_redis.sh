#!/usr/bin/env bash
# Two worker processes (prefork, two children each) sharing one state in Redis, then the
# counter example against them. Needs redis-server; starts its own on port 6390 by default.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${PORT:-6390}"
data="$(mktemp -d)"
redis-server --port "$port" --save "" --appendonly no --daemonize yes --dir "$data" \
  --logfile "$data/redis.log" --pidfile "$data/redis.pid"
export REDIS_URL="redis://127.0.0.1:$port/0"   # broker, results and state
cat > "$data/state.yaml" <<YAML
modules:
  - class: modules::state::StateModule
    config:
      adapter:
        class: modules::state::adapters::RedisAdapter
        config:
          redis_url: \${REDIS_URL}
YAML
export STATE_CONFIG="$data/state.yaml" PYTHONPATH="$PWD/examples"
.venv/bin/celery -A state_tasks worker -n one@%h -c 2 -l info -I profile_handlers >"$data/one.log" 2>&1 &
one=$!
.venv/bin/celery -A state_tasks worker -n two@%h -c 2 -l info -I profile_handlers >"$data/two.log" 2>&1 &
two=$!
cleanup() { kill -TERM $one $two 2>/dev/null; wait $one $two 2>/dev/null || true; kill "$(cat "$data/redis.pid")"; }
trap cleanup EXIT
for log in "$data/one.log" "$data/two.log"; do
  for _ in $(seq 300); do grep -q " ready\." "$log" && break; sleep 0.1; done
done
.venv/bin/python examples/counter.py 500
echo "tasks served: one=$(grep -c 'state::update.*succeeded' "$data/one.log"), two=$(grep -c 'state::update.*succeeded' "$data/two.log")"
