"""weir against a real Kafka-protocol broker process (tansu), read back by
DuckDB's delta extension and polars: a known set lands exactly once, and keeps
landing exactly once while the weir process is SIGKILLed again and again."""

import os
import random
import signal
import subprocess
import time

from conftest import (WEIR, duckdb_connection, duckdb_offsets, duckdb_with_views, polars_offsets,
                      read_report, table_path, weir, write_job)

# tansu's memory storage skips ahead when a fetch starts inside a record batch
# (see ../shared/STACK.md); one record per batch keeps every offset addressable.
ONE_RECORD_BATCHES = ["-X", "batch.num.messages=1"]


def committed_count(data, job="clickstream") -> int:
    """Rows in raw + dlq as DuckDB sees them; 0 before the tables exist."""
    con = duckdb_connection()
    total = 0
    for table in ("raw", "dlq"):
        try:
            total += con.sql(
                f"SELECT count(*) FROM delta_scan('{table_path(data, job, table)}')").fetchone()[0]
        except Exception:
            return 0
    return total


def stored(report) -> int:
    """Messages that end up in raw or dlq: all but the re-sent duplicates."""
    return sum(1 for _, _, kind in report if kind != "duplicate")


def wait_for_count(data, expected: int, timeout: float, proc) -> None:
    deadline = time.monotonic() + timeout
    while committed_count(data) < expected:
        assert proc.poll() is None, f"weir run exited early with {proc.returncode}"
        assert time.monotonic() < deadline, (
            f"only {committed_count(data)} of {expected} committed after {timeout}s")
        time.sleep(0.5)


def start_run(job, log):
    return subprocess.Popen([WEIR, "run", str(job)], stdout=log, stderr=subprocess.STDOUT)


def stop_gracefully(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def assert_exactly_once(data, report):
    # Re-sent events ("duplicate") are dropped by event-ID dedup.
    valid = sorted((p, o) for p, o, kind in report if kind == "valid")
    malformed = sorted((p, o) for p, o, kind in report if kind.startswith("malformed"))
    assert malformed, "the stream must include malformed messages"
    for read in (duckdb_offsets, polars_offsets):
        raw = read(data, "clickstream", "raw")
        dlq = read(data, "clickstream", "dlq")
        assert len(raw) == len(set(raw)), f"{read.__name__}: raw holds duplicates"
        assert raw == valid, f"{read.__name__}: raw differs from the valid originals"
        assert dlq == malformed, f"{read.__name__}: dlq differs from the malformed messages"


def assert_outputs_match_raw(job, data):
    """The outputs' merged views (as `weir views --dialect duckdb` defines them)
    equal the same figures computed by DuckDB from raw, which the callers prove
    exact: so the outputs are exact too, whatever crashes happened."""
    import math

    con = duckdb_with_views(job)
    raw = f"delta_scan('{table_path(data, 'clickstream', 'raw')}')"
    minute = "(epoch_ms(ts) // 60000) * 60000"
    got = con.sql("SELECT epoch_ms(window_start), page, country, views FROM page_views "
                  "ORDER BY ALL").fetchall()
    want = con.sql(f"SELECT {minute}, page, country, count(*) FROM {raw} WHERE action = 'view' "
                   "GROUP BY ALL ORDER BY ALL").fetchall()
    assert got == want and len(got) > 10
    got = con.sql("SELECT epoch_ms(window_start), page, country, purchases, revenue FROM revenue "
                  "ORDER BY ALL").fetchall()
    want = con.sql(f"SELECT {minute}, page, country, count(*), sum(price) FROM {raw} "
                   "WHERE action = 'purchase' GROUP BY ALL ORDER BY ALL").fetchall()
    assert [g[:4] for g in got] == [w[:4] for w in want]
    for g, w in zip(got, want):
        assert (g[4] is None and w[4] is None) or math.isclose(g[4], w[4], rel_tol=1e-9), (g, w)
    got = con.sql("SELECT event_id FROM purchases ORDER BY 1").fetchall()
    want = con.sql(f"SELECT event_id FROM {raw} WHERE action = 'purchase' ORDER BY 1").fetchall()
    assert got == want and got


def test_known_set_lands_exactly_once(broker, tmp_path):
    broker.create_topic("clicks", 3)
    data = tmp_path / "data"
    report = tmp_path / "produced.csv"
    weir("produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--count", 3000,
         "--malformed-ratio", 0.02, "--duplicate-ratio", 0.02, "--seed", 3,
         "--report", report, *ONE_RECORD_BATCHES, timeout=120)
    produced = read_report(report)
    assert len(produced) == 3000

    job = write_job(tmp_path / "job.toml", broker, "clicks", data)
    with open(tmp_path / "run.log", "w") as log:
        proc = start_run(job, log)
        wait_for_count(data, stored(produced), 120, proc)
        assert stop_gracefully(proc) == 0, (tmp_path / "run.log").read_text()
    assert_exactly_once(data, produced)
    assert_outputs_match_raw(job, data)


def wait_for_progress(data, before: int, proc, timeout: float = 60) -> None:
    """Waits until the tables hold more than `before` rows (this process committed)."""
    deadline = time.monotonic() + timeout
    while committed_count(data) <= before:
        assert proc.poll() is None, f"weir run exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "the restarted process committed nothing"
        time.sleep(0.2)


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(broker, tmp_path):
    """Each round starts `weir run`, waits until it has committed, then kills it:
    with SIGKILL after a random delay, or (every third round) with a crash
    injected between the raw and dlq commits of a random trigger."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"kill schedule seed: {seed}")
    broker.create_topic("clicks", 3)
    data = tmp_path / "data"
    report = tmp_path / "produced.csv"
    job = write_job(tmp_path / "job.toml", broker, "clicks", data, max_events=100)
    producer = subprocess.Popen(
        [WEIR, "produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--rate", "300",
         "--seconds", "45", "--malformed-ratio", "0.02", "--duplicate-ratio", "0.02",
         "--report", str(report), *ONE_RECORD_BATCHES],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    kills = 0
    with open(tmp_path / "run.log", "w") as log:
        while producer.poll() is None and kills < 7:
            if kills % 3 == 2:
                hit = rng.randint(1, 5)
                env = {**os.environ, "WEIR_FAULTS": f"sink.after_commit.raw@{hit}:crash"}
                proc = subprocess.Popen([WEIR, "run", str(job)], stdout=log,
                                        stderr=subprocess.STDOUT, env=env)
                assert proc.wait(timeout=90) != 0, "the injected crash did not happen"
            else:
                before = committed_count(data)
                proc = start_run(job, log)
                wait_for_progress(data, before, proc)
                time.sleep(rng.uniform(0.0, 1.5))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            kills += 1
        assert kills >= 4, "the producer finished before enough kills"
        assert producer.wait(timeout=120) == 0, producer.stdout.read()
        produced = read_report(report)

        proc = start_run(job, log)
        wait_for_count(data, stored(produced), 180, proc)
        time.sleep(1)  # let a stray late commit show itself before checking
        assert stop_gracefully(proc) == 0
    assert "injected crash at sink.after_commit.raw" in (tmp_path / "run.log").read_text()
    assert_exactly_once(data, produced)
    assert_outputs_match_raw(job, data)
