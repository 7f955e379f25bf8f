#!/usr/bin/env bash
# The one-command demo: builds `baton`, starts `baton dev` (controller and
# worker in one process, embedded store, no etcd), runs the ETL and fan-out
# examples, shows their results and logs, then stops.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/deps.sh
ensure_protoc

echo "== building baton"
cargo build --locked -p baton-cli --bin baton
baton="$PWD/target/debug/baton"

data_dir=$(mktemp -d -t baton-demo.XXXXXX)
port=${BATON_DEMO_PORT:-7070}
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  port=$(( 20000 + RANDOM % 20000 ))
fi
export BATON_ADDR="http://127.0.0.1:$port"

"$baton" dev --listen "127.0.0.1:$port" --data-dir "$data_dir" >"$data_dir/dev.log" 2>&1 &
dev_pid=$!
cleanup() {
  kill -TERM "$dev_pid" 2>/dev/null || true
  wait "$dev_pid" 2>/dev/null || true
}
trap cleanup EXIT

for _ in $(seq 1 100); do
  "$baton" dag list >/dev/null 2>&1 && break
  kill -0 "$dev_pid" 2>/dev/null || { cat "$data_dir/dev.log"; exit 1; }
  sleep 0.1
done
echo "== baton dev is running at $BATON_ADDR (data and logs in $data_dir)"

echo "== baton dag apply examples/etl.yaml examples/fanout.yaml"
"$baton" dag apply examples/etl.yaml examples/fanout.yaml
echo "== baton dag show etl"
"$baton" dag show etl

echo "== baton run trigger etl --wait"
"$baton" run trigger etl --wait
run_id=$("$baton" run list --dag etl --limit 1 -o json | sed -n 's/.*"run_id": "\([^"]*\)".*/\1/p' | head -n 1)
echo "== baton run show $run_id"
"$baton" run show "$run_id"
echo "== baton logs $run_id transform"
"$baton" logs "$run_id" transform

echo "== baton run trigger fanout --wait   (1 -> 100 -> 1)"
"$baton" run trigger fanout --wait

echo
echo "The demo is done. To keep Baton running, start it yourself:"
echo "  $baton dev          # then, in another shell:"
echo "  $baton dag apply examples/etl.yaml && $baton run trigger etl --wait"
