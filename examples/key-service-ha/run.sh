#!/usr/bin/env bash
# Starts PostgreSQL, three key-service replicas on it, the demo upstream and Envoy with
# examples/key-service-ha/envoy.yaml (see README.md here). Ctrl-C stops everything.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
run="$root/.run/key-service-ha"
bin="$root/target/debug"
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -x $pg_bin/initdb ]] || { echo "PostgreSQL is not installed: run 'make postgres'" >&2; exit 1; }
mkdir -p "$run"

as_pg=()
if [[ $(id -u) == 0 ]]; then
  as_pg=(runuser -u postgres --)
  chown postgres "$run"
fi
pg_port=5544
if [[ ! -d $run/pg ]]; then
  "${as_pg[@]}" "$pg_bin/initdb" -D "$run/pg" -U postgres --auth=trust > /dev/null
fi
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$run/pg" -o "-p $pg_port -k $run -c listen_addresses=127.0.0.1" -w start > /dev/null
pids=()
cleanup() {
  kill "${pids[@]}" 2> /dev/null || true
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$run/pg" -m fast stop > /dev/null 2>&1 || true
}
trap cleanup EXIT
"${as_pg[@]}" "$pg_bin/psql" -h 127.0.0.1 -p $pg_port -U postgres -qtc "SELECT 1 FROM pg_database WHERE datname = 'tollgate'" \
  | grep -q 1 || "${as_pg[@]}" "$pg_bin/createdb" -h 127.0.0.1 -p $pg_port -U postgres tollgate
url="postgres://postgres@127.0.0.1:$pg_port/tollgate"

# One set of secrets for every replica.
for name in admin dataplane viewer; do
  [[ -s $run/$name.token ]] || (umask 077; printf 'tg%s_%s' "${name:0:1}" "$(head -c 24 /dev/urandom | base64 | tr -d '/+=')" > "$run/$name.token")
done
shared=(--store "$url" --pepper-file "$run/pepper" --master-key-file "$run/master.key"
  --admin-token-file "$run/admin.token" --dataplane-token-file "$run/dataplane.token"
  --viewer-token-file "$run/viewer.token" --metrics-listen off --http-listen off)
port=7071
for replica in a b c; do
  "$bin/tollgate-keyd" --listen "127.0.0.1:$port" --data-dir "$run/keyd-$replica" "${shared[@]}" \
    > "$run/keyd-$replica.log" 2>&1 &
  echo $! > "$run/keyd-$replica.pid"
  pids+=($!)
  port=$((port + 1))
  sleep 1 # the first replica creates the pepper and master key the others read
done

"$bin/tollgate-echo" --listen 127.0.0.1:8081 > "$run/echo.log" 2>&1 &
pids+=($!)
sed -e "s|__WASM_DIR__|$root/target/wasm32-wasip1/wasm|g" \
    -e "s|__DATAPLANE_TOKEN__|$(cat "$run/dataplane.token")|g" \
    -e 's|__GATEWAY_PORT__|8080|g' -e 's|__ADMIN_PORT__|9901|g' -e 's|__UPSTREAM_PORT__|8081|g' \
    -e 's|__KEYD_A_PORT__|7071|g' -e 's|__KEYD_B_PORT__|7072|g' -e 's|__KEYD_C_PORT__|7073|g' \
    "$root/examples/key-service-ha/envoy.yaml" > "$run/envoy.yaml"
echo "gateway on 127.0.0.1:8080, replicas on 7071-7073, admin token in $run/admin.token"
"$root/.venv/bin/envoy" -c "$run/envoy.yaml" --log-level warn &
pids+=($!)
wait
