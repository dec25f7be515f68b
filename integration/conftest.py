"""Fixtures for the end-to-end tests: the weir binary, a real Apache Kafka
broker process, and independent readers of the Delta tables."""

import base64
import os
import pathlib
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
WEIR = os.environ.get("WEIR_BIN") or str(
    pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "weir"
)


CACHE = pathlib.Path.home() / ".cache"
KAFKA_LIBS = pathlib.Path(os.environ.get("WEIR_KAFKA_LIBS") or CACHE / "weir-kafka")
SPARK_LIBS = pathlib.Path(os.environ.get("WEIR_SPARK_LIBS") or CACHE / "weir-spark")
TRINO_HOME = pathlib.Path(os.environ.get("WEIR_TRINO_HOME") or CACHE / "weir-trino")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Broker:
    """A running single-node Apache Kafka (KRaft broker and controller in one
    process) and admin operations on it through confluent-kafka."""
    bootstrap: str
    log: pathlib.Path
    proc: subprocess.Popen

    def admin(self):
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap})

    def create_topic(self, name: str, partitions: int, config: dict | None = None) -> None:
        from confluent_kafka.admin import NewTopic

        topic = NewTopic(name, num_partitions=partitions, replication_factor=1,
                         config=config or {})
        admin = self.admin()  # a future fails when its client is dropped first
        admin.create_topics([topic])[name].result(timeout=30)
        self.wait_for_leaders(name, partitions)

    def wait_for_leaders(self, name: str, partitions: int, timeout: float = 30) -> None:
        """Until every partition of `name` has a leader: a topic (or new
        partitions) can be created before the metadata that serves it."""
        admin = self.admin()
        deadline = time.monotonic() + timeout
        while True:
            topic = admin.list_topics(name, timeout=10).topics.get(name)
            if (topic is not None and topic.error is None and len(topic.partitions) == partitions
                    and all(p.leader >= 0 for p in topic.partitions.values())):
                return
            assert time.monotonic() < deadline, f"topic {name} has no leaders after {timeout}s"
            time.sleep(0.1)

    def delete_topic(self, name: str, timeout: float = 30) -> None:
        """Deletes `name` and waits until the broker no longer lists it."""
        admin = self.admin()
        admin.delete_topics([name])[name].result(timeout=30)
        deadline = time.monotonic() + timeout
        while name in admin.list_topics(timeout=10).topics:
            assert time.monotonic() < deadline, f"topic {name} still listed after {timeout}s"
            time.sleep(0.1)

    def add_partitions(self, name: str, total: int) -> None:
        from confluent_kafka.admin import NewPartitions

        admin = self.admin()
        admin.create_partitions([NewPartitions(name, total)])[name].result(timeout=30)
        self.wait_for_leaders(name, total)

    def delete_records_before(self, name: str, partition: int, offset: int) -> int:
        """Moves the partition's log start offset to `offset` (DeleteRecords, as
        retention would); returns the new log start offset."""
        from confluent_kafka import TopicPartition

        admin = self.admin()
        futures = admin.delete_records([TopicPartition(name, partition, offset)])
        (result,) = futures.values()
        return result.result(timeout=30).low_watermark

    def watermarks(self, name: str, partition: int) -> tuple[int, int]:
        """(log start offset, high watermark) of one partition."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "weir-test-probe"})
        try:
            return consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=10)
        finally:
            consumer.close()


def kafka_properties(port: int, controller_port: int, logs: pathlib.Path) -> str:
    """A single KRaft node acting as broker and controller, sized for tests:
    one replica of everything, no initial rebalance delay (a group's first
    member gets its partitions at once, as on a busy production cluster
    whose delay has long passed), deletions and log cleaning that act within
    seconds, so that retention and compaction can be tested."""
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={logs}
auto.create.topics.enable=false
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.check.interval.ms=1000
log.cleaner.backoff.ms=500
log.segment.delete.delay.ms=1000
file.delete.delay.ms=1000
"""


def start_kafka(workdir: pathlib.Path) -> Broker:
    """Formats KRaft storage in `workdir` and starts the broker on free loopback
    ports with a small heap; returns once it accepts clients."""
    assert (KAFKA_LIBS / ".weir-pom").exists(), (
        f"no Kafka jars in {KAFKA_LIBS}: run integration/setup.sh")
    workdir.mkdir(parents=True, exist_ok=True)
    port, controller_port = free_port(), free_port()
    properties = workdir / "server.properties"
    properties.write_text(kafka_properties(port, controller_port, workdir / "kafka-logs"))
    java = ["java", "-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={ROOT / 'integration' / 'kafka' / 'log4j2.properties'}",
            "-cp", f"{KAFKA_LIBS}/*"]
    cluster_id = "-"
    while cluster_id.startswith("-"):  # as Kafka's own ids: a leading dash reads as a flag
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    formatted = subprocess.run([*java, "kafka.tools.StorageTool", "format", "--cluster-id",
                                cluster_id, "--config", str(properties)],
                               capture_output=True, text=True, timeout=120)
    assert formatted.returncode == 0, f"formatting Kafka's storage failed:\n{formatted.stdout}" \
        f"\n{formatted.stderr}"
    log = workdir / "kafka.log"
    proc = subprocess.Popen([*java, "kafka.Kafka", str(properties)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    broker = Broker(bootstrap=f"127.0.0.1:{port}", log=log, proc=proc)
    wait_for_line(proc, log, "Kafka Server started", 60, "Kafka")
    return broker


def wait_for_line(proc: subprocess.Popen, log: pathlib.Path, line: str, timeout: float,
                  name: str) -> None:
    """Waits until the service `proc` writes `line` to its `log`; fails with the
    log's end if it exits first or takes longer than `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while line not in log.read_text():
        assert proc.poll() is None, f"{name} exited:\n{log.read_text()[-5000:]}"
        assert time.monotonic() < deadline, f"{name} did not start in {timeout} s"
        time.sleep(0.1)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the process is still there after 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_kafka(broker: Broker) -> None:
    stop_process(broker.proc)


@pytest.fixture
def broker(tmp_path):
    """A fresh Apache Kafka broker for one test: topics, groups and committed
    offsets never leak from one test into the next."""
    kafka = start_kafka(tmp_path / "kafka")
    yield kafka
    stop_kafka(kafka)


# Long-running weir processes a test started (`spawn`), killed when it ends.
_SPAWNED: list[subprocess.Popen] = []


def spawn(command, **kwargs) -> subprocess.Popen:
    """Starts `command`; if it still runs when the test ends (a failed
    assertion skipped its stop), it is killed then, so that no process is
    left behind to load the tests after it."""
    proc = subprocess.Popen(command, **kwargs)
    _SPAWNED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    yield
    while _SPAWNED:
        proc = _SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def weir(*args, **kwargs) -> subprocess.CompletedProcess:
    """Runs the weir binary to completion, failing the test on a non-zero exit."""
    result = subprocess.run([WEIR, *map(str, args)], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"weir {args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def clickstream_job(path: pathlib.Path, replacements=(), warm_root=None, cold_root=None):
    """The example job with each (old, new) text replacement applied (each must
    match), and warm and cold rooted where given. Returns `path`."""
    text = (ROOT / "jobs" / "clickstream.toml").read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    for tier, root in (("warm", warm_root), ("cold", cold_root)):
        if root:
            text = text.replace(f"[tiers.{tier}]", f'[tiers.{tier}]\nroot = "{root}"')
    path.write_text(text)
    return path


def crash_after_each(command, points, check=None):
    """Runs `command` once per fault point (a `WEIR_FAULTS` plan entry without
    the action), crashing right after it; `check(point)` runs after each."""
    for point in points:
        env = {**os.environ, "WEIR_FAULTS": f"{point}@1:crash"}
        crashed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
        assert crashed.returncode != 0 and "injected crash" in crashed.stderr, crashed.stderr
        if check:
            check(point)


def kill_at_random_moments(command, times, low, high, check=None):
    """Starts `command` `times` times and SIGKILLs it after a random delay in
    [low, high] seconds; `check()` runs after each kill."""
    import random

    rng = random.Random()
    for _ in range(times):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(low, high))
        proc.kill()
        proc.wait()
        if check:
            check()


def write_job(path: pathlib.Path, broker: Broker, topic: str, data: pathlib.Path,
              max_events: int = 200, interval_ms: int = 0) -> pathlib.Path:
    """The clickstream job pointed at `broker`, reading `topic` into `data`.

    Small batches cut as soon as they are ready (no interval) by default: most
    tests want many triggers; the default batching has a test of its own."""
    text = (ROOT / "jobs" / "clickstream.toml").read_text()
    text = text.replace('brokers = "embedded"', f'brokers = "{broker.bootstrap}"')
    text = text.replace('topic = "clicks"', f'topic = "{topic}"')
    text = text.replace('root = "./data"', f'root = "{data}"')
    text = text.replace('max_events = 100000', f'max_events = {max_events}')
    text = text.replace('interval_ms = 1000', f'interval_ms = {interval_ms}')
    path.write_text(text)
    return path


def with_source_properties(job: pathlib.Path, **properties: str) -> pathlib.Path:
    """Adds librdkafka consumer properties to the job's [source.properties]."""
    lines = "".join(f'\n"{k.replace("_", ".")}" = "{v}"' for k, v in properties.items())
    job.write_text(job.read_text().replace("[source.properties]", f"[source.properties]{lines}"))
    return job


@dataclass(frozen=True)
class Sent:
    """One message `weir produce --report` says it delivered."""
    partition: int
    offset: int
    kind: str
    payload: str

    @property
    def position(self) -> tuple[int, int]:
        return (self.partition, self.offset)


def read_report(path: pathlib.Path) -> list[Sent]:
    import csv

    with open(path, newline="") as f:
        return [Sent(int(r["partition"]), int(r["offset"]), r["kind"], r["payload"])
                for r in csv.DictReader(f)]


def duckdb_connection():
    """DuckDB with the delta and httpfs extensions loaded from their PyPI
    packages; when AWS_ENDPOINT_URL is set (the `s3` fixture), a secret for it."""
    import duckdb
    import duckdb_extension_delta
    import duckdb_extension_httpfs

    con = duckdb.connect()
    for package, name in ((duckdb_extension_delta, "delta"), (duckdb_extension_httpfs, "httpfs")):
        ext = (pathlib.Path(package.__file__).parent / "extensions" / f"v{duckdb.__version__}"
               / f"{name}.duckdb_extension")
        con.sql(f"LOAD '{ext}'")
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        con.sql(f"""CREATE SECRET (TYPE S3, KEY_ID '{os.environ["AWS_ACCESS_KEY_ID"]}',
                    SECRET '{os.environ["AWS_SECRET_ACCESS_KEY"]}', REGION '{os.environ["AWS_REGION"]}',
                    ENDPOINT '{endpoint.split("://", 1)[1]}', URL_STYLE 'path', USE_SSL false)""")
    return con


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """An S3-compatible server (moto) on a free loopback port, with a fresh
    bucket; the AWS_* variables point weir, DuckDB and polars at it. Yields
    the bucket's s3:// URL."""
    port = free_port()
    log = open(tmp_path / "moto.log", "w")
    binary = pathlib.Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "weir-test",
           "AWS_SECRET_ACCESS_KEY": "weir-test-secret", "AWS_REGION": "us-east-1",
           "AWS_ALLOW_HTTP": "true"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                          region_name=env["AWS_REGION"])
    deadline = time.monotonic() + 20
    while True:
        try:
            client.create_bucket(Bucket="weir")
            break
        except Exception:
            assert proc.poll() is None, (tmp_path / "moto.log").read_text()
            assert time.monotonic() < deadline, "moto did not start"
            time.sleep(0.2)
    yield "s3://weir"
    proc.terminate()
    proc.wait(timeout=10)


def table_path(data: pathlib.Path, job: str, table: str) -> pathlib.Path:
    return data / "hot" / job / table


def duckdb_offsets(data: pathlib.Path, job: str, table: str) -> list[tuple[int, int]]:
    con = duckdb_connection()
    rows = con.sql(
        f"SELECT _partition, _offset FROM delta_scan('{table_path(data, job, table)}') ORDER BY 1, 2"
    ).fetchall()
    return [(int(p), int(o)) for p, o in rows]


def polars_offsets(data: pathlib.Path, job: str, table: str) -> list[tuple[int, int]]:
    import polars as pl

    df = pl.read_delta(str(table_path(data, job, table))).select("_partition", "_offset").sort(
        "_partition", "_offset")
    return [(int(p), int(o)) for p, o in df.iter_rows()]


def duckdb_with_views(job, data=None):
    """A DuckDB connection where `weir views --dialect duckdb` has been run."""
    con = duckdb_connection()
    args = ["views", "--job", job, "--dialect", "duckdb"]
    if data is not None:
        args += ["--data", data]
    for statement in weir(*args).stdout.split(";\n"):
        if statement.strip():
            con.sql(statement)
    return con


# What Spark's own launcher adds for Java 17+ (Spark reaches into these modules).
SPARK_JAVA_OPTIONS = [
    "-XX:+IgnoreUnrecognizedVMOptions", "-Djdk.reflect.useDirectMethodHandle=false",
    "-Dio.netty.tryReflectionSetAccessible=true",
    *(f"--add-opens=java.base/{package}=ALL-UNNAMED" for package in (
        "java.lang", "java.lang.invoke", "java.lang.reflect", "java.io", "java.net", "java.nio",
        "java.util", "java.util.concurrent", "java.util.concurrent.atomic", "jdk.internal.ref",
        "sun.nio.ch", "sun.nio.cs", "sun.security.action", "sun.util.calendar")),
]


def spark_sql(statements: list[str], workdir: pathlib.Path) -> list[list[dict]]:
    """Runs the statements in one local Apache Spark session with Delta Lake
    (integration/spark/SparkSql.java) and returns each one's rows as dicts."""
    import json

    assert (SPARK_LIBS / ".weir-pom").exists(), f"no Spark jars in {SPARK_LIBS}: run setup.sh"
    script = workdir / "spark.sql"
    script.write_text("".join(f"{s.strip().rstrip(';')};\n" for s in statements))
    result = subprocess.run(
        ["java", "-Xmx1g", *SPARK_JAVA_OPTIONS, f"-Djava.io.tmpdir={workdir}",
         "-cp", f"{SPARK_LIBS}/*", str(ROOT / "integration" / "spark" / "SparkSql.java"),
         str(script)],
        capture_output=True, text=True, timeout=600, cwd=workdir)
    assert result.returncode == 0, f"Spark failed:\n{result.stderr[-5000:]}"
    rows = [[] for _ in statements]
    for line in result.stdout.splitlines():
        index, row = line.split("\t", 1)
        rows[int(index)].append(json.loads(row))
    return rows


def trino_java() -> str:
    """A JDK new enough for Trino (24+): Temurin 25 under /usr/lib/jvm here."""
    found = sorted(pathlib.Path("/usr/lib/jvm").glob("temurin-2[4-9]*/bin/java"))
    assert found, "Trino needs Java 24 or newer (a Temurin 25 JDK under /usr/lib/jvm)"
    return str(found[-1])


@dataclass
class Trino:
    port: int

    def cursor(self):
        import trino

        return trino.dbapi.connect(host="127.0.0.1", port=self.port, user="weir",
                                   catalog="delta", schema="weir").cursor()

    def run(self, statement: str) -> list[list]:
        cursor = self.cursor()
        cursor.execute(statement)
        return cursor.fetchall()


@pytest.fixture(scope="session")
def trino(tmp_path_factory):
    """A single-node Trino server (coordinator and worker) with a Delta Lake
    catalog `delta` on the local file system and a file metastore."""
    assert (TRINO_HOME / ".weir-version").exists(), f"no Trino in {TRINO_HOME}: run setup.sh"
    home = tmp_path_factory.mktemp("trino")
    port = free_port()
    (home / "catalog").mkdir()
    (home / "config.properties").write_text(
        f"coordinator=true\nnode-scheduler.include-coordinator=true\n"
        f"http-server.http.port={port}\ndiscovery.uri=http://127.0.0.1:{port}\n"
        "query.max-memory=512MB\nquery.max-memory-per-node=512MB\n")
    (home / "catalog" / "delta.properties").write_text(
        "connector.name=delta_lake\nhive.metastore=file\n"
        f"hive.metastore.catalog.dir=file://{home}/metastore\n"
        "fs.native-local.enabled=true\nlocal.location=/\n"
        "delta.register-table-procedure.enabled=true\n")
    log = home / "trino.log"
    proc = subprocess.Popen(
        [trino_java(), "-Xmx1500m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
         "-Djdk.attach.allowAttachSelf=true", "--enable-native-access=ALL-UNNAMED",
         "-Dnode.environment=test", "-Dnode.id=weir-test", f"-Dnode.data-dir={home}/var",
         f"-Dconfig={home}/config.properties", f"-Dcatalog.config-dir={home}/catalog",
         f"-Dplugin.dir={TRINO_HOME}/plugin", "-cp", f"{TRINO_HOME}/lib/*",
         "io.trino.server.TrinoServer"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=home)
    wait_for_line(proc, log, "SERVER STARTED", 180, "Trino")
    server = Trino(port)
    wait_for_an_active_node(server)
    yield server
    stop_process(proc)


def wait_for_an_active_node(server: Trino, timeout=60):
    """Trino says it started before its node has announced itself to its own
    discovery service; a query scheduled in between fails with
    NO_NODES_AVAILABLE."""
    deadline, seen = time.monotonic() + timeout, "no answer yet"
    while True:
        try:
            seen = server.run("SELECT count(*) FROM system.runtime.nodes WHERE state = 'active'")
            if seen[0][0] > 0:
                return
        except Exception as e:  # noqa: BLE001 - any failure here means not ready yet
            seen = e
        assert time.monotonic() < deadline, f"Trino has no active node after {timeout} s: {seen}"
        time.sleep(0.5)
