#!/usr/bin/env bash
# Runs every check and test of the project. This is the README's test command, and .ci/run calls it.
#
#   scripts/test.sh    formatting, clippy and docs; all native tests and doc tests; the quickstart;
#                      then the Cloudflare part: the wasm toolchain (installed once), clippy for
#                      wasm32, the Worker example's release build and its end-to-end tests in
#                      local workerd; and the dashboard in headless Chromium (installed once),
#                      served natively by `collegedb dashboard` and by the Worker example.
#
# Environment: COLLEGEDB_SKIP_LINT=1 skips formatting, clippy and docs; COLLEGEDB_NATIVE_ONLY=1
# skips the Cloudflare part (both for a quick local loop only). COLLEGEDB_TOOLS_DIR moves the
# installed tools out of .tools/ (CI keeps them in a per-machine cache).
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n=== %s\n' "$*"; }

for tool in cargo-fmt cargo-clippy; do
  if ! command -v "$tool" >/dev/null; then
    echo "error: $tool is missing; install it with: rustup component add rustfmt clippy" >&2
    exit 1
  fi
done

if [ "${COLLEGEDB_SKIP_LINT:-0}" != 1 ]; then
  section "cargo fmt --check"
  cargo fmt --all -- --check
  section "cargo clippy (native, all targets, -D warnings)"
  cargo clippy --all-targets --quiet -- -D warnings
  section "cargo doc (-D warnings: broken links, undocumented public items)"
  RUSTDOCFLAGS="-D warnings" cargo doc -p collegedb -p collegedb-derive --no-deps --quiet
fi

section "cargo test (native: unit, integration, compile-fail UI, doc tests)"
cargo test --all-targets --quiet
cargo test --doc --quiet

section "quickstart (the README's first command, as a smoke test)"
cargo run --quiet --example quickstart > target/quickstart.log
grep -q "Directory entries: 3000" target/quickstart.log
grep -q "verify notes: clean" target/quickstart.log
tail -n 10 target/quickstart.log

section "the collegedb command on the quickstart's deployment"
cargo run --quiet -p collegedb-cli -- verify quickstart-data

section "the native build does not compile the worker crate"
if cargo tree -p collegedb --edges normal --prefix none | grep -q '^worker '; then
  echo "error: the native build of collegedb pulls in the worker crate" >&2
  exit 1
fi

if [ "${COLLEGEDB_NATIVE_ONLY:-0}" = 1 ]; then
  echo "COLLEGEDB_NATIVE_ONLY=1: skipping the Cloudflare part"
  exit 0
fi

section "wasm toolchain (installed once; seconds when present)"
scripts/install-wasm-toolchain.sh

if [ "${COLLEGEDB_SKIP_LINT:-0}" != 1 ]; then
  section "cargo clippy (wasm32, cloudflare feature, -D warnings)"
  (
    source scripts/wasm-env.sh
    RUSTC_WORKSPACE_WRAPPER="$(dirname "$RUSTC")/clippy-driver-wasm" \
    CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__" \
      cargo check --quiet -p collegedb -p collegedb-worker-example --no-default-features \
        --features collegedb/cloudflare --target wasm32-unknown-unknown
  )
fi

section "browser for the dashboard tests (Debian's chromium, puppeteer-core; installed once)"
scripts/install-browser.sh

section "the dashboard in headless Chromium, served by collegedb dashboard (screenshot: target/dashboard/native.png)"
cargo test --quiet -p collegedb-cli --features browser --test dashboard

section "build the Worker example (worker-build --release)"
mkdir -p target
if ! scripts/build-worker.sh > target/worker-build.log 2>&1; then
  tail -n 60 target/worker-build.log
  echo "error: the Worker example did not build (full log: target/worker-build.log)" >&2
  exit 1
fi
grep -E "Finished|Done in" target/worker-build.log || true
wasm=examples/worker/build/index_bg.wasm
printf 'bundle: %s bytes raw, %s bytes gzip\n' "$(wc -c < "$wasm")" "$(gzip -9 -c "$wasm" | wc -c)"

section "end-to-end tests in local workerd (D1, KV, Durable Objects; growth with a kill mid-job; the dashboard in headless Chromium)"
cargo test --quiet -p collegedb-tests --features workerd --test workerd --test workerd_growth
