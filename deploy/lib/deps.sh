# Installs what building and testing Baton needs, when it is missing, from
# Debian's packages. Sourced by deploy/demo.sh and deploy/test.sh.

need() { command -v "$1" >/dev/null 2>&1; }

install_packages() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    need sudo || { echo "error: installing $* needs root (or sudo)" >&2; return 1; }
    sudo="sudo"
  fi
  echo "installing $* (apt-get)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y -qq "$@" >/dev/null 2>&1; then
    # A fresh machine may have no package lists yet.
    $sudo apt-get update -qq >/dev/null
    $sudo apt-get install -y -qq "$@" >/dev/null
  fi
}

# protoc generates the gRPC code at build time.
ensure_protoc() { need protoc || install_packages protobuf-compiler; }

# etcd backs cluster mode and its tests.
ensure_etcd() { need etcd || [ -x /usr/bin/etcd ] || install_packages etcd-server; }

# moto serves S3 on loopback for the log store's S3 test (PyPI moto[server]).
ensure_moto() {
  python3 -c 'import moto.server' >/dev/null 2>&1 && return 0
  echo "installing moto[server] (pip)..." >&2
  python3 -m pip install --quiet 'moto[server]' >/dev/null 2>&1 || {
    echo "warning: cannot install moto[server]; the S3 log store test fails under CI=true" >&2
    return 0
  }
}
