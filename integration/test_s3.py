"""Tables on an S3-compatible server (moto): ingest, upkeep and a SIGKILL all
commit to the same tables concurrently, and the conditional-put log keeps every
event exactly once. DuckDB (httpfs + delta) and polars read the tables there."""

import json
import os
import signal
import subprocess
import time

import polars as pl

from conftest import WEIR, duckdb_connection, read_report
from test_broker_e2e import positions, start_run, stop_gracefully, stored
from test_maintain import (assert_upkeep_ran_and_outputs_exact, produce_in_background, upkeep_job,
                           wait_for_fold)


def s3_table(root, table):
    return f"{root}/data/hot/clickstream/{table}"


def offsets_polars(root, table):
    options = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP",
                                          "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                          "AWS_REGION")}
    frame = pl.read_delta(s3_table(root, table), storage_options=options)
    return sorted(zip(frame["_partition"].to_list(), frame["_offset"].to_list()))


def committed(job) -> int:
    result = subprocess.run([WEIR, "query", "--job", str(job), "--format", "json",
                             "SELECT (SELECT count(*) FROM raw) + (SELECT count(*) FROM dlq) "
                             "+ (SELECT count(*) FROM late) AS n"],
                            capture_output=True, text=True, timeout=60)
    return json.loads(result.stdout)[0]["n"] if result.returncode == 0 else 0


def test_s3_tables_stay_exactly_once_under_concurrent_commits_and_sigkill(broker, s3, tmp_path):
    broker.create_topic("clicks", 3)
    job = upkeep_job(tmp_path, broker, tmp_path / "unused", root=f"{s3}/data")
    report = tmp_path / "produced.csv"
    producer = produce_in_background(broker, report, 200, 20)
    with open(tmp_path / "run.log", "w") as log:
        proc = start_run(job, log)
        deadline = time.monotonic() + 60
        while committed(job) < 500:
            assert proc.poll() is None and time.monotonic() < deadline, "nothing committed"
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = start_run(job, log)
        assert producer.wait(timeout=120) == 0, producer.stdout.read()
        produced = read_report(report)
        deadline = time.monotonic() + 180
        while committed(job) < stored(produced):
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
            assert time.monotonic() < deadline, f"{committed(job)} of {stored(produced)}"
            time.sleep(1)
        wait_for_fold(tmp_path / "run.log", proc)
        assert stop_gracefully(proc) == 0
    log = (tmp_path / "run.log").read_text()
    assert "weir-test-secret" not in log, "a secret was logged"

    late = set(offsets_polars(s3, "late"))
    valid = positions(produced, lambda k: k == "valid")
    assert offsets_polars(s3, "raw") == sorted(set(valid) - late)
    assert offsets_polars(s3, "dlq") == positions(produced, lambda k: k.startswith("malformed"))
    duck = duckdb_connection()
    assert duck.sql(f"SELECT count(*) FROM delta_scan('{s3_table(s3, 'raw')}')").fetchone()[0] \
        == len(valid) - len(late)
    assert_upkeep_ran_and_outputs_exact(job, log, produced, late)
