#!/usr/bin/env bash
# Build the JupyterLab extension (labextension/) into xnat_bridge/labextension/, the
# directory the wheel ships as share/jupyter/labextensions/xnat-hpc-hub, and link it
# into the development virtualenv so its JupyterLab loads it (as
# `jupyter labextension develop` would).
#
# Idempotent, prints what it did:
#   - `npm ci` when labextension/node_modules is missing or older than package-lock.json
#   - `tsc` + `jupyter labextension build` when a source changed since the last build
#   - the symlink $VENV/share/jupyter/labextensions/xnat-hpc-hub -> xnat_bridge/labextension
#
#   VENV=/opt/xnat-hpc-hub/venv scripts/build-labextension.sh [--force]
set -euo pipefail

VENV=${VENV:-/opt/xnat-hpc-hub/venv}
HERE=$(cd "$(dirname "$0")/.." && pwd)
EXT="$HERE/labextension"
OUT="$HERE/xnat_bridge/labextension"
LINK="$VENV/share/jupyter/labextensions/xnat-hpc-hub"
FORCE=${1:-}

log() { printf '[labextension] %s\n' "$*"; }

command -v npm >/dev/null || { echo "build-labextension: npm not found (scripts/bootstrap.sh system installs it)" >&2; exit 1; }
[ -x "$VENV/bin/jupyter" ] || { echo "build-labextension: $VENV/bin/jupyter missing (run scripts/bootstrap.sh venv)" >&2; exit 1; }

cd "$EXT"
export npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false

# 1. dependencies: exactly package-lock.json; a stamp holds the lock file's hash
stamp=node_modules/.xnat-hpc-hub-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -d node_modules ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "npm ci (node_modules missing or stale)"
  npm ci --no-fund --no-audit --loglevel=error
  echo "$want" > "$stamp"
else
  log "node_modules up to date"
fi

# 2. build when a source changed since the last build (content hash of the sources, kept beside
#    node_modules: mtimes alone are not enough, since a pip install writes through the venv link
#    and refreshes the output's mtimes) or the output is missing
build_stamp=node_modules/.xnat-hpc-hub-build.sha256
src_hash=$(find src style package.json package-lock.json tsconfig.json -type f ! -path 'src/__tests__/*' \
             -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ "$FORCE" = --force ] || [ ! -f "$OUT/package.json" ] || [ ! -f "$build_stamp" ] \
   || [ "$(cat "$build_stamp")" != "$src_hash" ]; then
  log "tsc + jupyter labextension build -> ${OUT#$HERE/}"
  npx --no-install tsc
  # jupyter labextension build runs the venv's jupyter-builder: the venv's bin must be on PATH
  PATH="$VENV/bin:$PATH" "$VENV/bin/jupyter" labextension build . 2>&1 \
    | grep -v -e "'jupyter labextension build' is deprecated" -e $'^ *\e\\[0m$' || true
  [ -f "$OUT/package.json" ] || { echo "build-labextension: build failed (no $OUT/package.json)" >&2; exit 1; }
  echo "$src_hash" > "$build_stamp"
else
  log "built output up to date (${OUT#$HERE/})"
fi

# the prebuilt extension's install.json travels inside the built directory (one wheel entry)
cp -f "$EXT/install.json" "$OUT/install.json"

# 3. the development virtualenv loads the extension from the working tree
mkdir -p "$(dirname "$LINK")"
if [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$OUT" ]; then
  log "link $LINK up to date"
else
  # a copy left by a (non-editable) pip install of the wheel's shared-data, or a stale link
  rm -rf "$LINK"
  ln -s "$OUT" "$LINK"
  log "linked $LINK -> $OUT"
fi
