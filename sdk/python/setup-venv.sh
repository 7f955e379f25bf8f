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

# Tests set the SDK up from several processes at once: one at a time.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9

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
# Stubs are made again only when the protos (or the generator) changed:
# regenerating replaces baton_sdk/_gen, which a test running meanwhile may
# be importing.
proto_stamp="$venv/.baton-protos.sha256"
protos_hash="$(cat "$here"/../../proto/baton/v1/*.proto "$here/generate.py" | sha256sum)"
if [ ! -d "$here/baton_sdk/_gen" ] || [ "$protos_hash" != "$(cat "$proto_stamp" 2>/dev/null)" ]; then
  "$venv/bin/python" "$here/generate.py"
  echo "$protos_hash" > "$proto_stamp"
fi
