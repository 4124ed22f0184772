#!/usr/bin/env bash
# Starts the Tollgate quickstart: key service, demo upstream and the Envoy gateway with key-auth.
# `make run` builds the release binaries and the wasm filter, installs Envoy, then calls this.
#
# Ports (environment): GATEWAY_PORT (8080), ADMIN_PORT (9901), UPSTREAM_PORT (8081), KEYD_PORT (7070),
# KEYD_METRICS_PORT (9102), KEYD_HTTP_PORT (9180, the dashboard).
# Binaries: TOLLGATE_BIN_DIR (target/release), TOLLGATE_WASM_DIR (target/wasm32-wasip1/wasm),
# ENVOY_BIN (.venv/bin/envoy).
# State and logs go to .run/: keyd/ (database, tokens), keyd.log, echo.log, envoy.log, envoy.yaml.
# Ctrl-C stops all three.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

GATEWAY_PORT=${GATEWAY_PORT:-8080}
ADMIN_PORT=${ADMIN_PORT:-9901}
UPSTREAM_PORT=${UPSTREAM_PORT:-8081}
KEYD_PORT=${KEYD_PORT:-7070}
KEYD_METRICS_PORT=${KEYD_METRICS_PORT:-9102}
KEYD_HTTP_PORT=${KEYD_HTTP_PORT:-9180}
export GATEWAY_PORT ADMIN_PORT UPSTREAM_PORT KEYD_PORT KEYD_METRICS_PORT KEYD_HTTP_PORT

bin=${TOLLGATE_BIN_DIR:-target/release}
envoy=${ENVOY_BIN:-.venv/bin/envoy}
run=.run

for exe in "$bin/tollgate-keyd" "$bin/tollgate-echo" "$bin/tollgate" "$envoy"; do
  if [[ ! -x $exe ]]; then
    echo "missing $exe; start the quickstart with 'make run'" >&2
    exit 1
  fi
done
command -v curl >/dev/null || { echo "curl is required" >&2; exit 1; }

mkdir -p "$run/keyd"
chmod 700 "$run/keyd"

pids=()
names=()

stop_all() {
  local status=$?
  trap - INT TERM EXIT
  if [[ ${#pids[@]} -gt 0 ]]; then
    echo
    echo "stopping ${names[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    # Give them a moment to finish in-flight requests, then make sure they are gone.
    for _ in $(seq 50); do
      local alive=0
      for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
      [[ $alive -eq 0 ]] && break
      sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
  fi
  exit "$status"
}
trap stop_all INT TERM EXIT

start() { # name logfile command...
  local name=$1 log=$2
  shift 2
  "$@" > "$log" 2>&1 &
  pids+=("$!")
  names+=("$name")
}

# Fails with the tail of the log when the process has exited.
check_alive() { # index
  local i=$1
  if ! kill -0 "${pids[$i]}" 2>/dev/null; then
    echo "${names[$i]} exited; last lines of its log:" >&2
    tail -n 20 "$run/${names[$i]}.log" >&2
    exit 1
  fi
}

wait_for() { # index description command...
  local i=$1 what=$2
  shift 2
  for _ in $(seq 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    check_alive "$i"
    sleep 0.1
  done
  echo "timed out waiting for $what (see $run/${names[$i]}.log)" >&2
  exit 1
}

# 1. Key service (and its dashboard). It creates its admin, data-plane and viewer tokens on first start.
start keyd "$run/keyd.log" "$bin/tollgate-keyd" \
  --data-dir "$run/keyd" --listen "127.0.0.1:$KEYD_PORT" --log-format text \
  --metrics-listen "127.0.0.1:$KEYD_METRICS_PORT" --http-listen "127.0.0.1:$KEYD_HTTP_PORT"
wait_for 0 "the key service's data-plane token" test -s "$run/keyd/dataplane.token"
wait_for 0 "the key service on port $KEYD_PORT" bash -c "exec 3<>/dev/tcp/127.0.0.1/$KEYD_PORT"

# 2. Demo upstream.
start echo "$run/echo.log" "$bin/tollgate-echo" --listen "127.0.0.1:$UPSTREAM_PORT" --name echo
wait_for 1 "the echo upstream on port $UPSTREAM_PORT" curl -fsS "http://127.0.0.1:$UPSTREAM_PORT/"

# 3. Envoy with the key-auth filter.
DATAPLANE_TOKEN=$(<"$run/keyd/dataplane.token") \
  scripts/render-envoy.sh envoy/quickstart.yaml "$run/envoy.yaml"
start envoy "$run/envoy.log" "$envoy" -c "$run/envoy.yaml" --concurrency 2 --use-dynamic-base-id
wait_for 2 "Envoy to be ready" curl -fsS "http://127.0.0.1:$ADMIN_PORT/ready"
wait_for 2 "the gateway on port $GATEWAY_PORT" \
  curl -sS -o /dev/null "http://127.0.0.1:$GATEWAY_PORT/"

cli=$bin/tollgate
[[ $cli == /* ]] || cli=./$cli
server_flag=""
if [[ $KEYD_PORT != 7070 ]]; then server_flag=" --server http://127.0.0.1:$KEYD_PORT"; fi
gw="http://127.0.0.1:$GATEWAY_PORT"

cat <<MSG

Tollgate is running.
  gateway       $gw  (Envoy + key-auth)
  Envoy admin   http://127.0.0.1:$ADMIN_PORT  (/stats, /ready, /config_dump)
  key service   127.0.0.1:$KEYD_PORT  (gRPC; tokens in $run/keyd/)
  dashboard     http://127.0.0.1:$KEYD_HTTP_PORT  (log in with the admin token: cat $run/keyd/admin.token;
                read-only with the viewer token: cat $run/keyd/viewer.token)
  upstream      http://127.0.0.1:$UPSTREAM_PORT  (echo)
  metrics       http://127.0.0.1:$ADMIN_PORT/stats/prometheus  (gateway: tollgate_* with labels, envoy_*)
                http://127.0.0.1:$KEYD_METRICS_PORT/metrics  (key service)
                Prometheus with the alert rules: examples/observability/run.sh; Grafana dashboard:
                observability/grafana/tollgate.json
  logs          $run/keyd.log  $run/echo.log  $run/envoy.log (Envoy log and access log)

Try it in another terminal, from the repository root:

  # create a key for consumer alice (the secret is shown once)
  $cli$server_flag keys create --consumer alice --json | tee .run/alice.json
  KEY=\$(python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])' < .run/alice.json)
  KEY_ID=\$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' < .run/alice.json)

  # no key: 401
  curl -i $gw/hello

  # with the key: 200 and the upstream's echo
  curl -i -H "x-api-key: \$KEY" $gw/hello

  # rotate it yourself through the gateway, with the key alone: the answer has the new secret
  # (shown once); the old one keeps working for 24 hours
  curl -s -X POST -H "x-api-key: \$KEY" $gw/api/v1/self/rotate

  # warn before keys get 90 days old and rotate them then (webhooks: tollgate webhooks create)
  $cli$server_flag policies set --consumer alice --max-age 90d --notify-before 30d,7d,1d --mode auto

  # revoke it; within seconds the same call gets 401 again
  $cli$server_flag keys revoke "\$KEY_ID"
  curl -i -H "x-api-key: \$KEY" $gw/hello

  # what the gateway counted: allowed, and refused by reason
  curl -s http://127.0.0.1:$ADMIN_PORT/stats/prometheus | grep '^tollgate_key_auth_requests_total'

  # requests per key as the key service has them (the gateway reports every 5 s)
  $cli$server_flag usage --since 1h

Ctrl-C stops everything.
MSG

# Stay in the foreground until Ctrl-C or until one of the three exits.
set +e
wait -n "${pids[@]}"
for i in "${!pids[@]}"; do
  kill -0 "${pids[$i]}" 2>/dev/null || echo "${names[$i]} exited; see $run/${names[$i]}.log" >&2
done
exit 1
