#!/usr/bin/env bash
# Builds the Worker example for wasm32 with worker-build (release): examples/worker/build/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/wasm-env.sh
cd examples/worker
worker-build --release "$@"
