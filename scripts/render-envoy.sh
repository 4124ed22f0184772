#!/usr/bin/env bash
# Renders an Envoy config template from envoy/ by replacing its placeholders.
#
#   scripts/render-envoy.sh TEMPLATE OUTPUT
#
# Placeholders and the environment variables that fill them:
#   __WASM_DIR__         TOLLGATE_WASM_DIR   (default target/wasm32-wasip1/wasm, made absolute)
#   __DATAPLANE_TOKEN__  DATAPLANE_TOKEN     (required)
#   __GATEWAY_PORT__     GATEWAY_PORT        (default 8080)
#   __ADMIN_PORT__       ADMIN_PORT          (default 9901)
#   __UPSTREAM_PORT__    UPSTREAM_PORT       (default 8081)
#   __KEYD_PORT__        KEYD_PORT           (default 7070)
#   __KEYD_HTTP_PORT__   KEYD_HTTP_PORT      (default 9180)
#
# The output holds the data-plane token, so it is written readable by its owner only.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 TEMPLATE OUTPUT" >&2
  exit 2
fi
template=$1
output=$2

root=$(cd "$(dirname "$0")/.." && pwd)
wasm_dir=${TOLLGATE_WASM_DIR:-$root/target/wasm32-wasip1/wasm}
wasm_dir=$(cd "$wasm_dir" 2>/dev/null && pwd || echo "$wasm_dir")
: "${DATAPLANE_TOKEN:?DATAPLANE_TOKEN must be set (the key service data-plane token)}"

# Escape a value for the replacement side of a sed s||| command.
escape() { printf '%s' "$1" | sed -e 's/[\\&|]/\\&/g'; }

umask 077
sed \
  -e "s|__WASM_DIR__|$(escape "$wasm_dir")|g" \
  -e "s|__DATAPLANE_TOKEN__|$(escape "$DATAPLANE_TOKEN")|g" \
  -e "s|__GATEWAY_PORT__|${GATEWAY_PORT:-8080}|g" \
  -e "s|__ADMIN_PORT__|${ADMIN_PORT:-9901}|g" \
  -e "s|__UPSTREAM_PORT__|${UPSTREAM_PORT:-8081}|g" \
  -e "s|__KEYD_PORT__|${KEYD_PORT:-7070}|g" \
  -e "s|__KEYD_HTTP_PORT__|${KEYD_HTTP_PORT:-9180}|g" \
  "$template" > "$output.tmp"

if grep -q '__[A-Z_]*__' "$output.tmp"; then
  echo "$template: unknown placeholders left after rendering:" >&2
  grep -o '__[A-Z_]*__' "$output.tmp" | sort -u >&2
  rm -f "$output.tmp"
  exit 1
fi
mv "$output.tmp" "$output"
