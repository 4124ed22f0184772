#!/usr/bin/env bash
# Starts Prometheus (Debian's `prometheus` package: `make prometheus` installs it) scraping the
# quickstart's gateway and key service, with Tollgate's alert rules; UI on 127.0.0.1:9090.
# Start the quickstart first (`make run`). Data goes to .run/prometheus/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
port=${PROMETHEUS_PORT:-9090}
mkdir -p "$root/.run/prometheus"
cd "$here"
exec prometheus \
  --config.file="$here/prometheus.yml" \
  --storage.tsdb.path="$root/.run/prometheus" \
  --web.listen-address="127.0.0.1:$port"
