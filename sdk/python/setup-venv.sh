#!/usr/bin/env bash
# Creates (or reuses) a virtualenv with the SDK's pinned dependencies and
# generates the gRPC stubs from proto/ into baton_sdk/_gen.
#
#   sdk/python/setup-venv.sh VENV_DIR
#
# Idempotent and quick on reruns: pip runs only when requirements.txt
# changed since the last successful install (a copy is kept in the venv).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:?usage: setup-venv.sh VENV_DIR}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "creating a virtualenv in $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.baton-requirements.txt"
if ! cmp -s "$here/requirements.txt" "$stamp"; then
  echo "installing the SDK's requirements into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --only-binary=:all: -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$stamp"
fi
"$venv/bin/python" "$here/generate.py"
