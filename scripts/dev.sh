#!/usr/bin/env bash
# Local development: infrastructure, the five services, and their logs.
#   scripts/dev.sh infra   ensure Postgres and RabbitMQ answer on 127.0.0.1 (start or install them)
#   scripts/dev.sh up      infra + migrate + seed a dev org + start the five services
#   scripts/dev.sh down    stop what `up` started
#   scripts/dev.sh logs    follow the services' logs
# RINGER_CARRIER=twilio-fake: `up` also starts tools/twilio-fake (and, for the
# LLM agent without RINGER_LLM_BASE_URL, tools/fake-llm) and points the api and
# the dialer at them, so calls and /v1/numbers go through the Twilio adapter.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/.ringer"
services=(api dialer extractor billing webhook-dispatcher)
# Local stand-ins for the outside world, started before the services when used.
fakes=(twilio-fake fake-llm)
declare -A ports=([api]=8080 [dialer]=8081 [extractor]=8082 [billing]=8083 [webhook-dispatcher]=8084
                  [twilio-fake]=8300 [fake-llm]=8200)
twilio_listener=127.0.0.1:8090
needed=()

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/ringer}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
profile="${PROFILE:-debug}"

log() { printf '==> %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2
  for _ in $(seq 1 120); do
    port_open "$port" && return 0
    sleep 1
  done
  log "$what did not open port $port"; return 1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

ensure_postgres() {
  if port_open 5432; then return 0; fi
  if ! ls /etc/postgresql >/dev/null 2>&1; then
    log "installing PostgreSQL from Debian packages"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
  fi
  log "starting PostgreSQL"
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  if [ ! -f "/etc/postgresql/$version/main/conf.d/ringer.conf" ]; then
    # Trust auth on loopback, as the development and CI machines are configured.
    as_root sh -c "sed -i 's/^\(host.*127.0.0.1\/32\s*\).*/\1trust/; s/^\(local\s*all\s*postgres\s*\).*/\1trust/' /etc/postgresql/$version/main/pg_hba.conf"
    as_root sh -c "echo \"listen_addresses = '127.0.0.1'\" > /etc/postgresql/$version/main/conf.d/ringer.conf"
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port 5432 PostgreSQL
}

# True when the broker on 5672 answers the AMQP 0-9-1 protocol header with its
# Connection.Start frame (type 1, channel 0) within 5 s. An open port alone is
# not enough: a broker out of file descriptors accepts TCP and then says nothing.
amqp_answers() {
  local reply
  reply=$(timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672 && printf "AMQP\x00\x00\x09\x01" >&3 && head -c 3 <&3 | od -An -tx1' 2>/dev/null) || return 1
  [ "$(echo $reply)" = "01 00 00" ]
}

start_rabbitmq() {
  # Every quorum queue keeps files open; the packaged default of 1024
  # descriptors is too few for a broker that many test namespaces share.
  as_root bash -c 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; rabbitmq-server -detached'
  wait_port 5672 RabbitMQ
  for _ in $(seq 1 60); do amqp_answers && return 0; sleep 1; done
  log "RabbitMQ opened its port but does not answer AMQP"; return 1
}

ensure_rabbitmq() {
  if port_open 5672; then
    amqp_answers && return 0
    for _ in $(seq 1 10); do sleep 1; amqp_answers && return 0; done
    log "RabbitMQ accepts connections but does not answer AMQP: restarting it"
    as_root timeout 120 rabbitmqctl stop >/dev/null 2>&1 || as_root pkill -9 -u rabbitmq beam.smp || true
    for _ in $(seq 1 60); do port_open 5672 || break; sleep 1; done
    start_rabbitmq
    return
  fi
  if ! command -v rabbitmq-server >/dev/null; then
    log "installing RabbitMQ from Debian packages"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server
  fi
  log "starting RabbitMQ"
  start_rabbitmq
}

# Test, benchmark and fuzz namespaces get a queue expiry: a run that is killed
# before it deletes its topology leaves nothing behind for longer than 20
# minutes (an unused queue expires; one a test still uses does not).
expire_scratch_namespaces() {
  command -v rabbitmqctl >/dev/null || return 0
  as_root timeout 60 rabbitmqctl set_policy --apply-to queues --priority 0 ringer-scratch-expiry \
    '^(test|fuzz|bench|dialerbench|chaos|probe|e2e)[0-9a-z]*\.' '{"expires":1200000}' >/dev/null 2>&1 \
    || log "could not set the scratch-queue expiry policy (continuing)"
}

ensure_database() {
  local name=$1
  psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$name\"" >/dev/null
}

infra() {
  ensure_postgres
  ensure_rabbitmq
  expire_scratch_namespaces
  ensure_database ringer
  ensure_database ringer_test
}

bin() { echo "${CARGO_TARGET_DIR:-$root/target}/$profile/$1"; }

binary_of() {
  case "$1" in
    twilio-fake|fake-llm) echo "$1" ;;
    *) echo "ringer-$1" ;;
  esac
}

# The fakes to run and the settings that point the services at them
# (exported, so the supervisors and services inherit them).
use_fakes() {
  needed=()
  [ "${RINGER_CARRIER:-simulated}" = twilio-fake ] || return 0
  export RINGER_TWILIO_ACCOUNT_SID="${RINGER_TWILIO_ACCOUNT_SID:-ACfake}"
  export RINGER_TWILIO_AUTH_TOKEN="${RINGER_TWILIO_AUTH_TOKEN:-fake-token}"
  export TWILIO_FAKE_ADDR="127.0.0.1:${ports[twilio-fake]}"
  export TWILIO_FAKE_RING_MS="${TWILIO_FAKE_RING_MS:-1000}"
  export RINGER_TWILIO_API_BASE="http://$TWILIO_FAKE_ADDR"
  export RINGER_TWILIO_HTTP_ADDR="$twilio_listener"
  export RINGER_PUBLIC_BASE_URL="http://$twilio_listener"
  needed+=(twilio-fake)
  export RINGER_AGENT="${RINGER_AGENT:-llm}"
  if [ "$RINGER_AGENT" = llm ] && [ -z "${RINGER_LLM_BASE_URL:-}" ]; then
    export FAKE_LLM_ADDR="127.0.0.1:${ports[fake-llm]}"
    export RINGER_LLM_BASE_URL="http://$FAKE_LLM_ADDR/v1"
    export RINGER_LLM_MODEL="${RINGER_LLM_MODEL:-fake}"
    needed+=(fake-llm)
  fi
}

seed() {
  local admin
  admin=$(bin ringer-admin)
  if [ -f "$state/dev.env" ]; then
    # shellcheck disable=SC1091
    . "$state/dev.env"
    if curl -fsS -o /dev/null -H "Authorization: Bearer ${RINGER_API_KEY:-}" "http://127.0.0.1:8080/v1/balance" 2>/dev/null \
      || psql "$DATABASE_URL" -tAc "SELECT 1 FROM api_keys WHERE prefix = '${RINGER_API_KEY:0:11}' AND revoked_at IS NULL" | grep -q 1; then
      return 0
    fi
  fi
  log "seeding a dev organisation"
  local org key
  org=$("$admin" org create "Dev org")
  key=$("$admin" key create "$org" --name dev)
  "$admin" number add "$org" +15550100000 >/dev/null || true
  printf 'RINGER_API_URL=http://127.0.0.1:8080\nRINGER_API_KEY=%s\nRINGER_ORG_ID=%s\n' "$key" "$org" > "$state/dev.env"
}

# One service under a supervisor: started again (after a second) whenever it
# exits, as Kubernetes or compose would; a binary exits non-zero when it loses
# RabbitMQ, and comes back connected. `down` stops the supervisor first.
supervise() {
  local svc=$1
  local log="$state/logs/$svc.log"
  while [ ! -e "$state/pids/$svc.stop" ]; do
    RINGER_DEV_MODE=true RINGER_LOG_FORMAT=json RINGER_HTTP_ADDR="127.0.0.1:${ports[$svc]}" \
      "$(bin "$(binary_of "$svc")")" >>"$log" 2>&1 &
    local pid=$! rc=0
    echo "$pid" > "$state/pids/$svc.pid"
    wait "$pid" || rc=$?
    [ -e "$state/pids/$svc.stop" ] && break
    printf '{"level":"WARN","supervisor":"%s exited with status %s; restarting"}\n' "$(binary_of "$svc")" "$rc" >>"$log"
    sleep 1
  done
  rm -f "$state/pids/$svc.pid" "$state/pids/$svc.supervisor" "$state/pids/$svc.stop"
}

start_services() {
  mkdir -p "$state/logs" "$state/pids"
  local svc
  for svc in "${needed[@]}" "${services[@]}"; do
    local supervisor="$state/pids/$svc.supervisor"
    if [ -f "$supervisor" ] && kill -0 "$(cat "$supervisor")" 2>/dev/null; then continue; fi
    rm -f "$state/pids/$svc.stop"
    PROFILE="$profile" nohup "$0" supervise "$svc" >/dev/null 2>&1 &
    echo $! > "$supervisor"
  done
  for svc in "${needed[@]}"; do
    wait_port "${ports[$svc]}" "$svc" || { tail -n 20 "$state/logs/$svc.log" >&2; exit 1; }
  done
  for svc in "${services[@]}"; do
    local ready=""
    for _ in $(seq 1 60); do
      if curl -fsS -o /dev/null "http://127.0.0.1:${ports[$svc]}/readyz" 2>/dev/null; then ready=1; break; fi
      sleep 0.5
    done
    [ -n "$ready" ] || { log "ringer-$svc is not ready; see $state/logs/$svc.log"; tail -n 20 "$state/logs/$svc.log" >&2; exit 1; }
  done
}

up() {
  infra
  use_fakes
  mkdir -p "$state"
  log "building"
  if [ "$profile" = release ]; then cargo build --release --bins; else cargo build --bins; fi
  log "migrating"
  "$(bin ringer-admin)" migrate >/dev/null
  seed
  start_services
  # shellcheck disable=SC1091
  . "$state/dev.env"
  cat <<MSG

ringer is up: api ${RINGER_API_URL}, workers on :8081-8084 (/readyz, /metrics).
  RINGER_API_URL=${RINGER_API_URL}
  RINGER_API_KEY=${RINGER_API_KEY}
(also in .ringer/dev.env; logs: make logs; stop: make down)
MSG
  if [ "${#needed[@]}" -gt 0 ]; then
    echo "Carrier: twilio-fake at $RINGER_TWILIO_API_BASE (dialer's Twilio routes on $twilio_listener); agent: $RINGER_AGENT${RINGER_LLM_BASE_URL:+ at $RINGER_LLM_BASE_URL}"
  fi
}

down() {
  local svc
  for svc in "${services[@]}" "${fakes[@]}"; do
    local supervisor="$state/pids/$svc.supervisor" pidfile="$state/pids/$svc.pid"
    [ -f "$supervisor" ] || [ -f "$pidfile" ] || continue
    touch "$state/pids/$svc.stop"
    local pid
    pid=$(cat "$pidfile" 2>/dev/null || echo "")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    # The supervisor removes its own file as it exits, perhaps right now.
    local spid
    spid=$(cat "$supervisor" 2>/dev/null || echo "")
    if [ -n "$spid" ]; then
      for _ in $(seq 1 20); do kill -0 "$spid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$spid" 2>/dev/null && kill -KILL "$spid"
    fi
    rm -f "$pidfile" "$supervisor" "$state/pids/$svc.stop"
    log "stopped $(binary_of "$svc")"
  done
}

logs() { mkdir -p "$state/logs"; touch "$state/logs/"{api,dialer,extractor,billing,webhook-dispatcher}.log; tail -F "$state/logs/"*.log; }

case "${1:-}" in
  infra) infra ;;
  up) up ;;
  down) down ;;
  logs) logs ;;
  supervise) supervise "$2" ;;
  *) echo "usage: $0 infra|up|down|logs" >&2; exit 2 ;;
esac
