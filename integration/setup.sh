#!/usr/bin/env bash
# Creates (once) what the integration tests run besides weir, all outside the
# checkout so a warm machine reuses it:
#   ~/.cache/weir-venv   Python: DuckDB with its delta extension, polars, chdb,
#                        confluent-kafka (admin and transactional clients), pytest
#   ~/.cache/weir-kafka  Apache Kafka's jars (integration/kafka/pom.xml)
#   ~/.cache/weir-spark  Apache Spark's and Delta's jars (integration/spark/pom.xml)
#   ~/.cache/weir-trino  Trino's server with only its Delta Lake plugin
#   ~/.cache/weir-npm    dockerfilelint, which lints the Dockerfile (from npm)
# The jars come from Maven Central through `mvn dependency:copy-dependencies`
# (Maven's own cache is ~/.m2). Each part is redone only when its pinned list
# changed. WEIR_VENV, WEIR_KAFKA_LIBS, WEIR_SPARK_LIBS and WEIR_TRINO_HOME override the
# locations.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

venv=${WEIR_VENV:-$HOME/.cache/weir-venv}
if ! { [ -x "$venv/bin/python" ] && cmp -s "$venv/.weir-requirements" "$here/requirements.txt"; }; then
  echo "integration/setup.sh: creating $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$venv/.weir-requirements"
fi

# jars POM DEST: the runtime class path of POM's dependencies, copied to DEST.
jars() {
  local pom=$1 dest=$2
  if [ -f "$dest/.weir-pom" ] && cmp -s "$dest/.weir-pom" "$pom"; then
    return
  fi
  echo "integration/setup.sh: resolving $(basename "$(dirname "$pom")") jars into $dest" >&2
  rm -rf "$dest"
  mvn --batch-mode --quiet -Dstyle.color=never --file "$pom" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$dest"
  cp "$pom" "$dest/.weir-pom"
}
jars "$here/kafka/pom.xml" "${WEIR_KAFKA_LIBS:-$HOME/.cache/weir-kafka}"
jars "$here/spark/pom.xml" "${WEIR_SPARK_LIBS:-$HOME/.cache/weir-spark}"

# Trino is published as one tar.gz of the server with every plugin (820 MB);
# only lib/ and the Delta Lake plugin are kept. Its jars are hard links into
# other plugins' folders, so the whole archive is unpacked, then pruned.
trino_version=476
trino=${WEIR_TRINO_HOME:-$HOME/.cache/weir-trino}
if [ "$(cat "$trino/.weir-version" 2>/dev/null)" != "$trino_version" ]; then
  echo "integration/setup.sh: unpacking Trino $trino_version into $trino" >&2
  mvn --batch-mode --quiet -Dstyle.color=never dependency:get -Dtransitive=false \
    -Dartifact="io.trino:trino-server:$trino_version:tar.gz"
  staging=$(mktemp -d)
  tar -xzf "$HOME/.m2/repository/io/trino/trino-server/$trino_version/trino-server-$trino_version.tar.gz" \
    -C "$staging"
  rm -rf "$trino"
  mkdir -p "$trino/plugin"
  mv "$staging/trino-server-$trino_version/lib" "$trino/lib"
  mv "$staging/trino-server-$trino_version/plugin/delta-lake" "$trino/plugin/delta-lake"
  rm -rf "$staging"
  echo "$trino_version" > "$trino/.weir-version"
fi

# A Dockerfile linter from the npm registry (hadolint's binaries come only from
# GitHub, which these machines cannot reach). Without npm the test skips.
npm_dir=${WEIR_NPM:-$HOME/.cache/weir-npm}
dockerfilelint_version=1.8.0
if command -v npm >/dev/null && \
    [ "$(cat "$npm_dir/.weir-version" 2>/dev/null)" != "$dockerfilelint_version" ]; then
  echo "integration/setup.sh: installing dockerfilelint $dockerfilelint_version into $npm_dir" >&2
  npm install --silent --no-audit --no-fund --prefix "$npm_dir" "dockerfilelint@$dockerfilelint_version"
  echo "$dockerfilelint_version" > "$npm_dir/.weir-version"
fi
