#!/usr/bin/env bash
# Build the JupyterLab extension (labextension/) into xnat_bridge/labextension/, the
# directory the wheel ships as share/jupyter/labextensions/xnat-hpc-hub, and link it
# into the development virtualenv so its JupyterLab loads it (as
# `jupyter labextension develop` would).
#
# Idempotent, prints what it did:
#   - `npm ci` when labextension/node_modules is missing or older than package-lock.json
#   - `npm run build:prod` (tsc + `jupyter-builder build`, as the wheel build's hook runs it)
#     when a source changed since the last build
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
# the bundler of @jupyter/builder (rspack 2, in package-lock.json) needs Node ^20.19 or >=22.12:
# say so here rather than let npm warn (EBADENGINE) and the build fail later
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number);
              process.exit((a === 20 && b >= 19) || (a === 22 && b >= 12) || a > 22 ? 0 : 1)'; then
  echo "build-labextension: Node $(node --version) is too old for the lab extension's build (rspack 2 needs" \
       "Node 20.19+ or 22.12+); install a newer nodejs, or build the wheel on a machine that has one" \
       "(a site installing the wheel needs no Node: docs/admin.md, \"Installing\")" >&2
  exit 1
fi
[ -x "$VENV/bin/jupyter-builder" ] || { echo "build-labextension: $VENV/bin/jupyter-builder missing (run scripts/bootstrap.sh venv)" >&2; exit 1; }

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
  # the same build as the wheel's (pyproject.toml's jupyter-builder hook): package.json's
  # build:prod = tsc + `jupyter-builder build .` (+ install.json), with the venv's jupyter-builder
  log "npm run build:prod (tsc + jupyter-builder build) -> ${OUT#$HERE/}"
  PATH="$VENV/bin:$PATH" npm run --silent build:prod
  [ -f "$OUT/static/style.js" ] || { echo "build-labextension: build failed (no $OUT/static/style.js)" >&2; exit 1; }
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

# 4. the lab's settings defaults (no "Jupyter news" prompt, no update check), as the wheel's
#    shared-data installs them; the site's own overrides.json still wins
SETTINGS_SRC="$HERE/jupyter-config/lab/settings/overrides.d/xnat-hpc-hub.json"
SETTINGS_LINK="$VENV/share/jupyter/lab/settings/overrides.d/xnat-hpc-hub.json"
mkdir -p "$(dirname "$SETTINGS_LINK")"
if [ -L "$SETTINGS_LINK" ] && [ "$(readlink "$SETTINGS_LINK")" = "$SETTINGS_SRC" ]; then
  log "lab settings link up to date"
else
  rm -f "$SETTINGS_LINK"
  ln -s "$SETTINGS_SRC" "$SETTINGS_LINK"
  log "linked $SETTINGS_LINK -> $SETTINGS_SRC"
fi
