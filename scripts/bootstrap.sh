#!/usr/bin/env bash
# Install everything xnat-hpc-hub needs on a fresh Debian 12 machine, as root.
# Idempotent: each step checks first and does nothing when already done.
#
#   scripts/bootstrap.sh system   Debian packages + configurable-http-proxy $CHP_VERSION (npm)
#   scripts/bootstrap.sh venv     virtualenv outside /root, from Debian's python3, and the
#                                 JupyterLab extension (scripts/build-labextension.sh)
#   scripts/bootstrap.sh oldest-hub  a second virtualenv with the oldest JupyterHub pyproject.toml
#                                 declares (jupyterhub>=X → X), for the hub-side tests `make test`
#                                 runs on both ends of the declared range
#   scripts/bootstrap.sh kube     the development Kubernetes: containerd, runc, CNI plugins (Debian),
#                                 Kubernetes v1.34, etcd and pause built from the Go module proxy
#   scripts/bootstrap.sh all      system, venv and kube (default)
#
# The virtualenv is built from /usr/bin/python3 in a world-readable place
# (default /opt/xnat-hpc-hub/venv) because servers and Slurm jobs run as other
# Unix users, who cannot read an interpreter under /root.
set -euo pipefail

VENV=${VENV:-/opt/xnat-hpc-hub/venv}
VENV_OLDEST=${VENV_OLDEST:-/opt/xnat-hpc-hub/venv-jupyterhub-oldest}
HERE=$(cd "$(dirname "$0")/.." && pwd)
# util-linux: setpriv, with which a local server drops from root to its user inside its sandbox
DEB_PACKAGES=(slurm-wlm munge bubblewrap util-linux age python3-venv python3-dev
              nodejs npm chromium curl ca-certificates openssh-client)
# openssh-client: ssh-keygen -Y verify, the standard check of the hub's signatures of published results
# configurable-http-proxy, JupyterHub's proxy, exactly this release: it and its whole dependency
# tree accept Node 18 (Debian 12's nodejs) and 20. 5.2.0 needs Node 20; 5.3.0 pulls commander 15,
# which wants Node 22.12 (npm's EBADENGINE warning). Re-installed when another version is there.
CHP_VERSION=5.1.0
# the group that may read the XNAT archive: granted only inside local servers' sandboxes,
# never a member's (c.XnatLocalSpawner.archive_group; docs/admin.md)
ARCHIVE_GROUP=${ARCHIVE_GROUP:-xnat-archive}

log() { printf '[bootstrap] %s\n' "$*"; }

# pip warns about every package missing from the machine's extra local indexes; hide that noise only
pip_q() { "$VENV/bin/pip" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# apt_install WHAT PACKAGE...: install those of the Debian packages that are missing
apt_install() {
  local what=$1; shift
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages ($what): ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    log "Debian packages ($what) present"
  fi
}

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: run as root (it installs Debian packages and writes $VENV)" >&2
    exit 1
  fi
}

system() {
  need_root
  local wanted=()
  for p in "${DEB_PACKAGES[@]}"; do
    # nodejs/npm may come from elsewhere (e.g. NodeSource); accept any node+npm on PATH
    if [ "$p" = nodejs ] && command -v node >/dev/null; then continue; fi
    if [ "$p" = npm ] && command -v npm >/dev/null; then continue; fi
    wanted+=("$p")
  done
  apt_install "hub, servers, Slurm" "${wanted[@]}"
  if ! getent group "$ARCHIVE_GROUP" >/dev/null; then
    log "creating the system group $ARCHIVE_GROUP (reads the XNAT archive; no members)"
    groupadd --system "$ARCHIVE_GROUP"
  else
    log "group $ARCHIVE_GROUP present"
  fi
  local chp=""
  if command -v configurable-http-proxy >/dev/null; then
    chp=$(configurable-http-proxy --version 2>/dev/null || true)
  fi
  if [ "$chp" != "$CHP_VERSION" ]; then
    log "installing configurable-http-proxy $CHP_VERSION (npm)${chp:+, replacing $chp}"
    npm install -g --no-fund --no-audit --no-update-notifier configurable-http-proxy@"$CHP_VERSION" >/dev/null
  else
    log "configurable-http-proxy $CHP_VERSION present"
  fi
}

# jsonschema imports rfc3987-syntax where it is installed (jupyter-events asks for it through an
# extra): an optional checker of "iri" strings, which no Jupyter event schema uses, that compiles
# an Earley grammar at import — 0.9 s of every single-user server's start. pip check agrees.
drop_slow_optional() {
  if [ -d "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/rfc3987_syntax" ]; then
    log "removing rfc3987-syntax from $VENV (0.9 s of every server start; see scripts/bootstrap.sh)"
    pip_q uninstall -y -q rfc3987-syntax
  fi
}

venv() {
  need_root
  local stamp="$VENV/.xnat-hpc-hub-stamp"
  local want
  want=$(cat "$HERE/pyproject.toml" | sha256sum | cut -d' ' -f1):$HERE
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "virtualenv $VENV up to date"
    drop_slow_optional
    return
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV from /usr/bin/python3"
    mkdir -p "$(dirname "$VENV")"
    /usr/bin/python3 -m venv "$VENV"
    pip_q install -q --upgrade pip
  fi
  # the development link to a checkout's built lab extension (scripts/build-labextension.sh
  # makes it again): pip must not write the wheel's shared data through it into that checkout
  local lab_link="$VENV/share/jupyter/labextensions/xnat-hpc-hub"
  if [ -L "$lab_link" ]; then rm -f "$lab_link"; fi
  # ... and its settings link (dangling when that checkout is gone: pip's uninstall stops on it)
  local settings_link="$VENV/share/jupyter/lab/settings/overrides.d/xnat-hpc-hub.json"
  if [ -L "$settings_link" ]; then rm -f "$settings_link"; fi
  # the development venv holds both roles (hub: the JupyterHub side; server: the researcher's
  # server), demo: numpy + scikit-learn for devxnat's demo archive and examples/ (the checkout's
  # devxnat/ and devstack/ come with the editable install), test: what the tests need.
  # SKIP_JUPYTER_BUILDER: the wheel build's lab extension hook is not needed for an editable
  # install; scripts/build-labextension.sh (next step) builds the extension and links it
  log "installing xnat-hpc-hub (editable, with the hub, server, demo and test extras) into $VENV"
  SKIP_JUPYTER_BUILDER=1 pip_q install -q -e "$HERE[hub,server,demo,test]"
  drop_slow_optional
  chmod -R a+rX "$(dirname "$VENV")"
  echo "$want" > "$stamp"
}

# The oldest JupyterHub the package declares, with what the in-process hub tests import (they run
# from the checkout: PYTHONPATH, no install of the package). Re-made when pyproject.toml changes.
oldest_hub() {
  need_root
  local floor want stamp="$VENV_OLDEST/.xnat-hpc-hub-stamp"
  floor=$(sed -n 's/^ *"jupyterhub>=\([0-9][0-9.]*\)",\{0,1\}$/\1/p' "$HERE/pyproject.toml" | head -1)
  if [ -z "$floor" ]; then
    echo "bootstrap: pyproject.toml declares no \"jupyterhub>=X\" to test the oldest JupyterHub of" >&2
    exit 1
  fi
  want="jupyterhub==$floor:$(sha256sum < "$HERE/pyproject.toml" | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "virtualenv $VENV_OLDEST (JupyterHub $floor) up to date"
    return
  fi
  if [ ! -x "$VENV_OLDEST/bin/python" ]; then
    log "creating virtualenv $VENV_OLDEST from /usr/bin/python3 for JupyterHub $floor"
    mkdir -p "$(dirname "$VENV_OLDEST")"
    /usr/bin/python3 -m venv "$VENV_OLDEST"
  fi
  log "installing JupyterHub $floor (the oldest pyproject.toml declares) into $VENV_OLDEST"
  VENV="$VENV_OLDEST" pip_q install -q "jupyterhub==$floor" "pytest>=8.0" "pytest-asyncio>=0.23" \
    "pytest-timeout>=2.2" "pyyaml>=6.0" "jinja2>=3.0" "requests>=2.31" "pyrage>=1.2" "cryptography>=41"
  echo "$want" > "$stamp"
}

# The development Kubernetes (devstack/kube.py, `xnat-hpc-hub kube up`): Debian's containerd, runc
# and CNI plugins, and Kubernetes v1.34 + etcd + the pause program built from the Go module proxy
# (devstack/k8s: go.mod pins them) into $KUBE_BIN. Built again only when that module changes (its
# go.mod, go.sum and sources: the stamp); Go's build cache makes a rebuild of one change quick.
KUBE_BIN=${KUBE_BIN:-/opt/xnat-hpc-hub/k8s/bin}
KUBE_DEB_PACKAGES=(containerd runc containernetworking-plugins iproute2 mmdebstrap)
kube() {
  need_root
  apt_install "development Kubernetes" "${KUBE_DEB_PACKAGES[@]}"
  local go_bin
  go_bin=$(command -v go || echo /usr/local/go/bin/go)
  if [ ! -x "$go_bin" ]; then
    echo "bootstrap: the development Kubernetes is built with Go (>= 1.24), which is not installed" >&2
    exit 1
  fi
  local src="$HERE/devstack/k8s" stamp="$KUBE_BIN/.xnat-hpc-hub-stamp" want
  want=$(cat "$src/go.mod" "$src/go.sum" "$src/tools.go" "$src/pause/main.go" | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "development Kubernetes programs in $KUBE_BIN up to date"
    return
  fi
  log "building Kubernetes, etcd and pause from the Go module proxy into $KUBE_BIN (about five minutes the first time on two cores)"
  mkdir -p "$KUBE_BIN"
  # the version the programs report (a build from the module proxy has no git tree to read it from)
  local version
  version=$(sed -n 's/^[[:space:]]*\(require \)\{0,1\}k8s.io\/kubernetes \(v[0-9.]*\).*$/\2/p' "$src/go.mod" | head -1)
  local ver_flags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ver_flags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$(echo "$version" | cut -d. -f1 | tr -d v)"
    ver_flags+=" -X $pkg.gitMinor=$(echo "$version" | cut -d. -f2) -X $pkg.gitTreeState=clean"
  done
  (cd "$src" && CGO_ENABLED=0 "$go_bin" build -trimpath -ldflags "$ver_flags" -o "$KUBE_BIN/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl \
    && CGO_ENABLED=0 "$go_bin" build -trimpath -ldflags "-s -w" -o "$KUBE_BIN/etcd" go.etcd.io/etcd/server/v3 \
    && CGO_ENABLED=0 "$go_bin" build -trimpath -ldflags "-s -w" -o "$KUBE_BIN/pause" ./pause)
  echo "$want" > "$stamp"
}

# Servers and Slurm jobs run as the users' own accounts and import this checkout (editable
# install): every directory above it must be traversable by them. Adds only the execute
# (traverse) bit where it is missing, never read, and says so.
checkout_traversable() {
  local dir="$HERE"
  while [ "$dir" != / ]; do
    dir=$(dirname "$dir")
    if [ "$(( 0$(stat -c %a "$dir") & 01 ))" = 0 ]; then
      log "making $dir traversable for other users (chmod o+x): servers run as the users' accounts and import $HERE"
      chmod o+x "$dir"
    fi
  done
  chmod -R o+rX "$HERE/hub_ext" "$HERE/spawner" "$HERE/xnat_bridge" "$HERE/devxnat" "$HERE/devstack" \
    "$HERE/config" "$HERE/examples"
}

# The JupyterLab extension: built after the editable install (its build needs the venv's
# JupyterLab) and linked into the venv; quick when nothing changed.
labextension() {
  VENV="$VENV" "$HERE/scripts/build-labextension.sh"
}

case "${1:-all}" in
  system) system ;;
  venv) venv; labextension; checkout_traversable ;;
  oldest-hub) oldest_hub ;;
  kube) kube ;;
  all) system; venv; labextension; checkout_traversable; kube ;;
  *) echo "usage: $0 [system|venv|oldest-hub|kube|all]" >&2; exit 2 ;;
esac
