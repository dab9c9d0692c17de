#!/usr/bin/env bash
# Runs every check and test of the project. This is the README's test command, and .ci/run calls it.
#
#   scripts/test.sh            formatting, clippy (native), all native tests and doc tests
#
# Environment: COLLEGEDB_SKIP_LINT=1 skips formatting and clippy (for a quick local loop).
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
tail -n 8 target/quickstart.log
