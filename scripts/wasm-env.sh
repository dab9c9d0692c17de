# Source this file (after scripts/install-wasm-toolchain.sh) to build for wasm32 and run wrangler:
#   source scripts/wasm-env.sh
_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_tools=${COLLEGEDB_TOOLS_DIR:-$_root/.tools}
export PATH="$_tools/bin:$_root/node_modules/.bin:$PATH"
export RUSTC="$_tools/bin/rustc-wasm"
export CARGO_TARGET_DIR="$_root/target/wasm"
export WASM_BINDGEN_BIN="$_tools/bin/wasm-bindgen"
export WASM_OPT_BIN="$_root/node_modules/.bin/wasm-opt"
export ESBUILD_BIN="$_root/node_modules/.bin/esbuild"
export WRANGLER_SEND_METRICS=false
export WRANGLER_SEND_ERROR_REPORTS=false
export CLOUDFLARE_CF_FETCH_ENABLED=false
export XDG_CONFIG_HOME="$_root/target/xdg/config"
export XDG_CACHE_HOME="$_root/target/xdg/cache"
export WRANGLER_LOG_PATH="$_root/target/xdg/wrangler-logs"
unset _root _tools
