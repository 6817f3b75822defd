#!/usr/bin/env bash
# Type-checks the web client (tsc --checkJs) and runs its browser tests against the real
# server. Installs what it needs on a fresh Debian machine: Chromium (apt), Node.js and
# npm (apt, if missing), the npm packages of tests/web, and the debug `parlor` binary.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "missing: $* (install them with apt-get)" >&2
    exit 1
  fi
  if [ -z "${apt_updated:-}" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# Emoji in screenshots (people use them; the test messages do too).
[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need+=(fonts-noto-color-emoji)
if [ ${#need[@]} -gt 0 ]; then
  echo "== apt-get install ${need[*]}"
  apt_install "${need[@]}"
fi

cd "$here"
if [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/typescript ] || [ package.json -nt node_modules/.package-lock.json ]; then
  echo "== npm install (tests/web)"
  if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
  else
    npm install --no-audit --no-fund --loglevel=error
  fi
fi

echo "== tsc --checkJs (web client)"
npx --no-install tsc -p jsconfig.json
# The service worker runs in a worker global scope: checked against the WebWorker
# library instead of the DOM one (the two cannot be loaded together).
npx --no-install tsc -p jsconfig.worker.json

target="${CARGO_TARGET_DIR:-$root/target}"
bin="${PARLOR_BIN:-$target/debug/parlor}"
if [ -z "${PARLOR_BIN:-}" ]; then
  # Always (re)build: cargo is quick when nothing changed, and the embedded client files
  # must be the ones in this tree.
  echo "== cargo build -p parlor"
  (cd "$root" && cargo build -p parlor --locked --quiet)
fi
[ -x "$bin" ] || { echo "no parlor binary at $bin" >&2; exit 1; }
export PARLOR_BIN="$bin"

mkdir -p "$root/artifacts/screenshots"
echo "== browser tests"
if [ $# -gt 0 ]; then files=("$@"); else files=("$here"/*.test.js); fi
node --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
