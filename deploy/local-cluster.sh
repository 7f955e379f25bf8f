#!/usr/bin/env bash
# A Baton cluster on this machine's loopback: a 3-member etcd cluster,
# 3 controllers (one leads, two follow) and N workers.
#
#   deploy/local-cluster.sh start [--workers N] [--base-port P] [--dir DIR] [--lease-ttl 5s]
#   deploy/local-cluster.sh status [--dir DIR]
#   deploy/local-cluster.sh stop [--dir DIR]
#
# Ports, from P (default 23000): etcd clients P..P+2, etcd peers P+10..P+12,
# controllers P+20..P+22. Data, logs and PIDs live in DIR (default: a new
# temporary directory; its path is printed and written to
# ${TMPDIR:-/tmp}/baton-local-cluster.last so `stop` finds it). `stop` signals
# only the PIDs recorded at start. Uses target/release/baton (built when
# missing) or $BATON_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/deps.sh

command=${1:-}
[ -n "$command" ] && shift
workers=2
base_port=23000
dir=""
lease_ttl=5s
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers=$2; shift 2 ;;
    --base-port) base_port=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --lease-ttl) lease_ttl=$2; shift 2 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
last_file="${TMPDIR:-/tmp}/baton-local-cluster.last"

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

baton_bin() {
  if [ -n "${BATON_BIN:-}" ]; then echo "$BATON_BIN"; return; fi
  if [ ! -x target/release/baton ]; then
    ensure_protoc
    cargo build --release --locked -p baton-cli --bin baton >&2
  fi
  echo "$PWD/target/release/baton"
}

wait_port() { # host:port, seconds
  local deadline=$(( $(date +%s) + $2 ))
  until (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "error: nothing listens on $1 after $2 s" >&2; return 1; }
    sleep 0.1
  done
}

start() {
  ensure_etcd
  local etcd
  etcd=$(command -v etcd || echo /usr/bin/etcd)
  local baton
  baton=$(baton_bin)
  [ -n "$dir" ] || dir=$(mktemp -d -t baton-local-cluster.XXXXXX)
  mkdir -p "$dir/logs" "$dir/task-logs"
  if [ -s "$dir/pids" ]; then
    echo "error: $dir already has a cluster (stop it first)" >&2
    exit 1
  fi
  echo "$dir" >"$last_file"
  : >"$dir/pids"

  local peers="" clients=""
  for i in 0 1 2; do
    peers+="${peers:+,}e$i=http://127.0.0.1:$((base_port + 10 + i))"
    clients+="${clients:+,}http://127.0.0.1:$((base_port + i))"
  done
  for i in 0 1 2; do
    "$etcd" --name "e$i" --data-dir "$dir/etcd-$i" \
      --listen-client-urls "http://127.0.0.1:$((base_port + i))" \
      --advertise-client-urls "http://127.0.0.1:$((base_port + i))" \
      --listen-peer-urls "http://127.0.0.1:$((base_port + 10 + i))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((base_port + 10 + i))" \
      --initial-cluster "$peers" --initial-cluster-state new \
      --initial-cluster-token "baton-local-$base_port" \
      >"$dir/logs/etcd-$i.log" 2>&1 &
    echo "etcd-$i $!" >>"$dir/pids"
  done
  for i in 0 1 2; do wait_port "127.0.0.1:$((base_port + i))" 20; done

  local controllers=""
  for i in 0 1 2; do
    local port=$((base_port + 20 + i))
    controllers+="${controllers:+,}http://127.0.0.1:$port"
    "$baton" controller --id "controller-$i" --listen "127.0.0.1:$port" \
      --data-dir "$dir/controller-$i" --log-dir "$dir/task-logs" \
      --etcd "$clients" --lease-ttl "$lease_ttl" \
      >"$dir/logs/controller-$i.log" 2>&1 &
    echo "controller-$i $!" >>"$dir/pids"
  done
  for i in 0 1 2; do wait_port "127.0.0.1:$((base_port + 20 + i))" 20; done

  for i in $(seq 0 $((workers - 1))); do
    "$baton" --addr "$controllers" worker --id "worker-$i" --work-dir "$dir/work-$i" \
      >"$dir/logs/worker-$i.log" 2>&1 &
    echo "worker-$i $!" >>"$dir/pids"
  done
  echo "BATON_ADDR=$controllers" >"$dir/env"

  echo "Baton local cluster in $dir"
  echo "  etcd:        $clients"
  echo "  controllers: $controllers"
  echo "  workers:     $workers"
  echo "Use it with:   export BATON_ADDR=$controllers"
  echo "Stop it with:  deploy/local-cluster.sh stop"
}

status() {
  [ -n "$dir" ] || dir=$(cat "$last_file" 2>/dev/null || true)
  [ -s "$dir/pids" ] || { echo "no local cluster recorded"; exit 1; }
  while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null; then echo "$name: running (pid $pid)"; else echo "$name: stopped"; fi
  done <"$dir/pids"
  # shellcheck disable=SC1091
  . "$dir/env"
  BATON_ADDR=$BATON_ADDR "$(baton_bin)" cluster status || true
}

stop() {
  [ -n "$dir" ] || dir=$(cat "$last_file" 2>/dev/null || true)
  [ -s "$dir/pids" ] || { echo "no local cluster recorded"; exit 0; }
  # Workers first (they drain), then controllers (the leader resigns), then etcd.
  for kind in worker controller etcd; do
    local pids=()
    while read -r name pid; do
      case "$name" in "$kind"-*) kill -TERM "$pid" 2>/dev/null && pids+=("$pid") ;; esac
    done <"$dir/pids"
    for pid in "${pids[@]}"; do
      for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    done
  done
  : >"$dir/pids"
  echo "stopped the local cluster in $dir (its data stays there)"
}

case "$command" in
  start) start ;;
  status) status ;;
  stop) stop ;;
  *) usage ;;
esac
