#!/usr/bin/env bash
# Creates (once) the Python environment the integration tests use: the tansu
# broker, DuckDB with its delta extension, polars, pytest. Re-running is a no-op
# unless requirements.txt changed. WEIR_VENV overrides the location.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${WEIR_VENV:-$HOME/.cache/weir-venv}
stamp=$venv/.weir-requirements
if [ -x "$venv/bin/python" ] && cmp -s "$stamp" "$here/requirements.txt"; then
  exit 0
fi
echo "integration/setup.sh: creating $venv" >&2
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
cp "$here/requirements.txt" "$stamp"
