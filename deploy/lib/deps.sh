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

# The Python SDK's test needs python3 that can create virtualenvs with pip
# (Debian ships `venv`'s ensurepip in python3-venv).
ensure_python_venv() {
  need python3 && python3 -c 'import venv, ensurepip' >/dev/null 2>&1 \
    || install_packages python3 python3-venv python3-pip
}

# A virtualenv in target/ with the SDK's pinned grpcio and grpcio-tools from
# PyPI, and stubs generated from proto/; quick when already there.
ensure_python_sdk() {
  ensure_python_venv
  sdk/python/setup-venv.sh target/python-sdk-venv
}

# moto serves S3 on loopback for the log store's S3 test: PyPI
# `moto[server]`, pinned, in a virtualenv of its own under target/ (Debian's
# python3 refuses pip installs outside one). Its python is BATON_MOTO_PYTHON.
ensure_moto() {
  ensure_python_venv
  local venv=target/test-tools-venv
  local want='moto[server]==5.2.1'
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  if [ "$(cat "$venv/.baton-moto" 2>/dev/null)" != "$want" ]; then
    echo "installing $want into $venv (pip)..." >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$want"
    echo "$want" > "$venv/.baton-moto"
  fi
  export BATON_MOTO_PYTHON="$PWD/$venv/bin/python"
}
