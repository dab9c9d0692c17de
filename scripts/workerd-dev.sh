#!/usr/bin/env bash
# Builds the Worker example and serves it in local workerd (local D1, KV and Durable Objects) on
# 127.0.0.1:${PORT:-8787}, keeping its data in target/workerd-dev/. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-wasm-toolchain.sh
scripts/build-worker.sh
source scripts/wasm-env.sh
exec wrangler dev --local --ip 127.0.0.1 --port "${PORT:-8787}" --persist-to target/workerd-dev \
  --show-interactive-dev-session=false
