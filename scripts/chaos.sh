#!/usr/bin/env bash
# `make chaos`: the whole system under load while it is being broken, then an audit.
#
# Starts several replicas of every service from release binaries (a fresh
# database `ringer_chaos`, a throw-away broker namespace, ports 18300+), each
# under a supervisor loop that restarts it whenever it exits (the deployment
# model: systemd, Kubernetes or compose restart a process that dies, including
# one that exits on a lost broker or database connection). Then runs
# `loadgen run` against the api replicas while it
#   - SIGKILLs a random replica of each service in turn, every CHAOS_KILL_INTERVAL s,
#   - restarts RabbitMQ once (rabbitmqctl stop_app / start_app),
#   - restarts Postgres once (pg_ctlcluster … restart),
# and finally lets loadgen wait for every call and webhook and audit the lot:
# nothing lost, nothing doubled. Exits with loadgen's verdict.
#
# Knobs (environment): CHAOS_CALLS, CHAOS_RATE, CHAOS_TIME_SCALE, CHAOS_KILL_INTERVAL,
# CHAOS_SETTLE_SECONDS, CHAOS_REPLICAS_{API,DIALER,EXTRACTOR,BILLING,WEBHOOK},
# CHAOS_RESTART_UNREADY_AFTER=N (also SIGKILL a replica not ready for N s, like a
# liveness probe; off by default because it hides hangs), CHAOS_SKIP_BUILD=1.
# Everything is left in target/chaos/ (logs per replica, supervisor log, report.json,
# audit-input.json with all the data the audit saw).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work="$root/target/chaos"
db=ringer_chaos
export PGHOST=127.0.0.1 PGUSER=postgres
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export RINGER_NAMESPACE="chaos$(date +%s)$RANDOM"

calls="${CHAOS_CALLS:-800}"
rate="${CHAOS_RATE:-12}"
time_scale="${CHAOS_TIME_SCALE:-0.15}"
kill_interval="${CHAOS_KILL_INTERVAL:-3}"
declare -A replicas=(
  [api]="${CHAOS_REPLICAS_API:-2}"
  [dialer]="${CHAOS_REPLICAS_DIALER:-3}"
  [extractor]="${CHAOS_REPLICAS_EXTRACTOR:-2}"
  [billing]="${CHAOS_REPLICAS_BILLING:-2}"
  [webhook-dispatcher]="${CHAOS_REPLICAS_WEBHOOK:-2}"
)
declare -A base_port=([api]=18300 [dialer]=18310 [extractor]=18320 [billing]=18330 [webhook-dispatcher]=18340)
declare -A pool_size=([api]=6 [dialer]=5 [extractor]=4 [billing]=4 [webhook-dispatcher]=4)
services=(api dialer extractor billing webhook-dispatcher)

log() { printf '==> %s %s\n' "$(date +%T)" "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ -z "${CHAOS_SKIP_BUILD:-}" ]; then
  log "building release binaries"
  cargo build --release -p ringer-api -p ringer-dialer -p ringer-extractor -p ringer-billing \
    -p ringer-webhook-dispatcher -p ringer-admin -p loadgen --bins >&2
fi
bin="$root/target/release"

rm -rf "$work"
mkdir -p "$work/logs" "$work/pids"
supervisor_log="$work/supervisor.log"
chaos_log="$work/chaos.log"
: >"$supervisor_log"
: >"$chaos_log"

# RabbitMQ keeps files open per quorum queue; with the default 1024 descriptors a
# broker holding a few hundred queues (other test namespaces) runs out, and then
# accepts no connection.
broker_pid=$(ss -ltnpH 'sport = :5672' 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2 || true)
if [ -n "$broker_pid" ]; then
  broker_files=$(awk '/Max open files/ {print $4}' "/proc/$broker_pid/limits" 2>/dev/null || echo "")
  if [ -n "$broker_files" ] && [ "$broker_files" -lt 4096 ]; then
    log "warning: RabbitMQ may open only $broker_files files; with many queues it stops accepting connections"
    log "  (restart it with a higher limit, e.g. ulimit -n 20000 before starting it as the rabbitmq user)"
  fi
fi
log "fresh database $db, namespace $RINGER_NAMESPACE"
psql -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
psql -d postgres -qc "CREATE DATABASE $db" >/dev/null
"$bin/ringer-admin" migrate >/dev/null

# Shared by every replica. Leases, sweeps and margins are shortened so that
# recovery from a killed replica happens within the run, not in 30 s–15 min.
export RINGER_TIME_SCALE="$time_scale"
export RINGER_DEV_MODE=true
export RINGER_LOG_FORMAT=json
export RUST_LOG="${RUST_LOG:-info}"
export RINGER_SHUTDOWN_GRACE_SECONDS=5
export RINGER_DIALER_LEASE_SECONDS=5
export RINGER_WEBHOOK_TIMEOUT_SECONDS=5
export RINGER_WEBHOOK_SWEEP_INTERVAL_SECONDS=5
export RINGER_WEBHOOK_SWEEP_AFTER_SECONDS=10
export RINGER_BILLING_SWEEP_INTERVAL_SECONDS=5
export RINGER_BILLING_STUCK_HOLD_MARGIN_SECONDS=30
export RINGER_ORG_CONCURRENCY=10000

# One replica under a supervisor: start, wait, note the exit, start again.
supervise() {
  local name=$1 svc=$2 port=$3
  while [ ! -e "$work/stop" ]; do
    RINGER_HTTP_ADDR="127.0.0.1:$port" RINGER_DB_MAX_CONNECTIONS="${pool_size[$svc]}" \
      "$bin/ringer-$svc" >>"$work/logs/$name.log" 2>&1 &
    local pid=$!
    echo "$pid" >"$work/pids/$name.pid"
    local rc=0
    wait "$pid" || rc=$?
    echo "$(date +%T.%3N) $name pid $pid exited rc=$rc" >>"$supervisor_log"
    [ -e "$work/stop" ] && break
    sleep 0.3
  done
}

all_replicas=()
for svc in "${services[@]}"; do
  for i in $(seq 0 $((replicas[$svc] - 1))); do
    name="$svc-$i"
    port=$((base_port[$svc] + i))
    supervise "$name" "$svc" "$port" 2>>"$work/supervisor.err" &
    echo $! >"$work/pids/$name.supervisor"
    all_replicas+=("$name:$port")
  done
done

stop_all() {
  touch "$work/stop"
  for entry in "${all_replicas[@]}"; do
    local name=${entry%%:*}
    [ -f "$work/pids/$name.pid" ] && kill -TERM "$(cat "$work/pids/$name.pid")" 2>/dev/null || true
  done
  for entry in "${all_replicas[@]}"; do
    local name=${entry%%:*}
    local supervisor
    supervisor=$(cat "$work/pids/$name.supervisor" 2>/dev/null || echo "")
    [ -n "$supervisor" ] || continue
    for _ in $(seq 1 40); do kill -0 "$supervisor" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$supervisor" 2>/dev/null; then
      kill -KILL "$(cat "$work/pids/$name.pid")" 2>/dev/null || true
      wait "$supervisor" 2>/dev/null || true
    fi
  done
}
cleanup() {
  stop_all
  timeout 60 "$bin/ringer-admin" topology delete --yes >/dev/null 2>&1 || true
}
trap cleanup EXIT

ready() { curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1/readyz" 2>/dev/null; }
for entry in "${all_replicas[@]}"; do
  for _ in $(seq 1 300); do ready "${entry##*:}" && break; sleep 0.2; done
  ready "${entry##*:}" || { log "${entry%%:*} is not ready; see $work/logs/${entry%%:*}.log"; exit 1; }
done
log "${#all_replicas[@]} replicas ready: $(for s in "${services[@]}"; do printf '%s x%s ' "$s" "${replicas[$s]}"; done)"

api_urls=""
for i in $(seq 0 $((replicas[api] - 1))); do
  api_urls+="${api_urls:+,}http://127.0.0.1:$((base_port[api] + i))"
done

log "loadgen: $calls calls at $rate/s, time scale $time_scale"
"$bin/loadgen" --api-url "$api_urls" run \
  --calls "$calls" --rate "$rate" --concurrency 32 --orgs 3 --endpoints 1 \
  --inline-percent 50 --cancel-percent 4 --max-duration-seconds 60 \
  --retry-seconds 240 --settle-seconds "${CHAOS_SETTLE_SECONDS:-240}" --admin-bin "$bin/ringer-admin" \
  --report-json "$work/report.json" --dump "$work/audit-input.json" \
  >"$work/loadgen.out" 2>"$work/loadgen.err" &
loadgen_pid=$!

# The chaos: while the calls are being submitted (and a little after).
submit_seconds=$(python3 -c "print(int($calls / $rate) + 1)")
chaos_seconds=$((submit_seconds + 10))
rabbit_at=$((chaos_seconds * 2 / 10))
postgres_at=$((chaos_seconds * 6 / 10))
declare -A kills=()
note() { printf '%s %s\n' "$(date +%T.%3N)" "$*" | tee -a "$chaos_log" >&2; }

# The application restarts inside the running node (every connection drops,
# quorum queues recover from disk). Should that fail, the whole node restarts.
restart_rabbitmq() {
  note "RabbitMQ: rabbitmqctl stop_app"
  local started=$SECONDS
  if timeout 120 rabbitmqctl stop_app >>"$chaos_log" 2>&1 && timeout 120 rabbitmqctl start_app >>"$chaos_log" 2>&1; then
    note "RabbitMQ: start_app done"
  else
    note "RabbitMQ: stop_app/start_app failed; rabbitmqctl stop + rabbitmq-server -detached"
    timeout 120 rabbitmqctl stop >>"$chaos_log" 2>&1 || true
    bash -c 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; rabbitmq-server -detached' >>"$chaos_log" 2>&1
  fi
  for _ in $(seq 1 240); do port_open 5672 && break; sleep 0.5; done
  timeout 120 rabbitmqctl await_startup >>"$chaos_log" 2>&1 || true
  note "RabbitMQ back after $((SECONDS - started)) s"
}

restart_postgres() {
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  note "Postgres: pg_ctlcluster $version main restart"
  local started=$SECONDS
  pg_ctlcluster --skip-systemctl-redirect "$version" main restart >>"$chaos_log" 2>&1
  for _ in $(seq 1 120); do port_open 5432 && break; sleep 0.5; done
  note "Postgres back after $((SECONDS - started)) s"
}

not_ready() {
  local names=()
  for entry in "${all_replicas[@]}"; do ready "${entry##*:}" || names+=("${entry%%:*}"); done
  echo "${#names[@]} not ready${names[*]:+: ${names[*]}}"
}

# The infrastructure restarts, one after the other, beside the kills.
infra_chaos() {
  local started=$SECONDS
  sleep "$rabbit_at"
  restart_rabbitmq
  sleep 10
  note "10 s after the RabbitMQ restart: $(not_ready)"
  local wait=$((postgres_at - (SECONDS - started)))
  [ "$wait" -gt 0 ] && sleep "$wait"
  restart_postgres
  sleep 10
  note "10 s after the Postgres restart: $(not_ready)"
}

# Optional liveness probe (off by default): SIGKILL a replica whose /readyz has
# failed for CHAOS_RESTART_UNREADY_AFTER seconds in a row, as a Kubernetes
# livenessProbe on /readyz would. It hides hangs, so the default run goes without.
liveness() {
  local after=$1
  declare -A failing=()
  while [ ! -e "$work/stop" ]; do
    for entry in "${all_replicas[@]}"; do
      local name=${entry%%:*}
      if ready "${entry##*:}"; then failing[$name]=0; continue; fi
      failing[$name]=$((${failing[$name]:-0} + 1))
      if [ "${failing[$name]}" -ge "$after" ]; then
        local pid
        pid=$(cat "$work/pids/$name.pid" 2>/dev/null || echo "")
        [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null && note "liveness: SIGKILL $name (pid $pid), not ready for $after s"
        failing[$name]=0
      fi
    done
    sleep 1
  done
}
liveness_pid=""
if [ -n "${CHAOS_RESTART_UNREADY_AFTER:-}" ]; then
  liveness "$CHAOS_RESTART_UNREADY_AFTER" &
  liveness_pid=$!
fi

kill_one() {
  local svc=$1
  local i=$((RANDOM % replicas[$svc]))
  local name="$svc-$i"
  local pid
  pid=$(cat "$work/pids/$name.pid" 2>/dev/null || echo "")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null && note "SIGKILL $name (pid $pid)"
    kills[$svc]=$((${kills[$svc]:-0} + 1))
  fi
}

infra_chaos &
infra_pid=$!
chaos_started=$SECONDS
round=0
while kill -0 "$loadgen_pid" 2>/dev/null && [ $((SECONDS - chaos_started)) -lt "$chaos_seconds" ]; do
  sleep "$kill_interval"
  kill_one "${services[$((round % ${#services[@]}))]}"
  round=$((round + 1))
done
wait "$infra_pid" || true
note "chaos over after $((SECONDS - chaos_started)) s; letting the system settle"

loadgen_rc=0
wait "$loadgen_pid" || loadgen_rc=$?
sleep 1
ready_at_end=$(not_ready)
[ -n "$liveness_pid" ] && { touch "$work/stop"; wait "$liveness_pid" 2>/dev/null || true; }

# What happened, beside the audit.
{
  echo
  echo "chaos summary (namespace $RINGER_NAMESPACE, database $db, logs in target/chaos/)"
  printf '  replicas: '
  for svc in "${services[@]}"; do printf '%s x%s  ' "$svc" "${replicas[$svc]}"; done
  echo
  printf '  SIGKILLs: '
  total_kills=0
  for svc in "${services[@]}"; do
    printf '%s %s  ' "$svc" "${kills[$svc]:-0}"
    total_kills=$((total_kills + ${kills[$svc]:-0}))
  done
  echo "(total $total_kills)"
  echo "  RabbitMQ restarted once, Postgres restarted once:"
  grep -E 'RabbitMQ back|Postgres back|after the' "$chaos_log" | sed 's/^/    /'
  self_exits=$(grep -vc 'rc=137' "$supervisor_log" || true)
  echo "  exits other than our SIGKILLs (restarted by the supervisor): $self_exits"
  grep -v 'rc=137' "$supervisor_log" | sed 's/^/    /' | head -n 20 || true
  panics=$(cat "$work"/logs/*.log | grep -c 'panicked' || true)
  echo "  panics in the logs: $panics"
  grep -E 'liveness:' "$chaos_log" | sed 's/^/    /' || true
  echo "  replicas at the end (of ${#all_replicas[@]}): $ready_at_end"
  echo
} >"$work/summary.txt"
cat "$work/loadgen.out"
cat "$work/summary.txt"
if [ "$loadgen_rc" -ne 0 ]; then
  log "chaos: the audit FAILED (loadgen exit $loadgen_rc); see target/chaos/ (loadgen.err, logs/, audit-input.json)"
else
  log "chaos: the audit passed"
fi
exit "$loadgen_rc"
