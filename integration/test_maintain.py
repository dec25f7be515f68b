"""`weir maintain`: closed windows folded, small files merged, the log checkpointed
and vacuumed, and no reader ever sees a different answer: not after, not during,
not while `weir run` keeps ingesting."""

import contextlib
import dataclasses
import json
import os
import pathlib
import subprocess
import threading
import time

import polars as pl

from conftest import (ROOT, WEIR, crash_after_each, duckdb_connection, duckdb_with_views,
                      kill_at_random_moments, read_report, spawn, table_path, weir, write_job)
from test_broker_e2e import (assert_outputs_match_oracle, positions,
                             start_run, stop_gracefully, wait_for_count, stored)

TABLES = ("raw", "dlq", "late", "page_views", "revenue", "purchases")


def fast_job(path, text=None):
    """The clickstream job with 10 s windows and 5 s lateness, so windows close
    within a short test and maintenance has partials to fold."""
    text = text or (ROOT / "jobs" / "clickstream.toml").read_text()
    text = text.replace('window = "1m"', 'window = "10s"')
    text = text.replace('allowed_lateness = "1m"', 'allowed_lateness = "5s"')
    path.write_text(text)
    return path


def active_files(data, table) -> dict[str, int]:
    """The table's active files per partition folder: a merge leaves one in
    each (a run across midnight UTC writes two event dates)."""
    from collections import Counter

    from deltalake import DeltaTable

    uris = DeltaTable(str(table_path(data, "clickstream", table))).file_uris()
    return Counter(uri.rsplit("/", 1)[0] for uri in uris)


TOTALS = ("SELECT (SELECT sum(views) FROM page_views) AS views, "
          "(SELECT sum(visitors) FROM page_views) AS visitors, "
          "(SELECT sum(purchases) FROM revenue) AS purchases, "
          "(SELECT round(sum(revenue), 6) FROM revenue) AS revenue, "
          "(SELECT count(*) FROM raw) AS raw, (SELECT count(*) FROM late) AS late, "
          "(SELECT count(*) FROM dlq) AS dlq, (SELECT count(*) FROM purchases) AS purchase_rows")


def rows(relation):
    """Rows, sorted, with floats to 9 significant digits: a fold adds the same
    sums in another order, and floating-point addition is not associative."""
    def plain(v):
        return float(f"{v:.9g}") if isinstance(v, float) else v
    return sorted((tuple(plain(v) for v in row) for row in relation.fetchall()), key=repr)


def query_totals(job, data):
    return json.loads(weir("query", "--job", job, "--data", data, "--format", "json",
                           TOTALS, timeout=120).stdout)


@contextlib.contextmanager
def totals_never_change(job, data):
    """A reader polls the totals while the block runs: every poll must equal
    the totals from before it."""
    totals = query_totals(job, data)
    seen, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            seen.append(query_totals(job, data))

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        yield
    finally:
        stop.set()
        reader.join()
    assert seen and all(s == totals for s in seen), [s for s in seen if s != totals][:1]


def snapshot(job, data):
    """Every output's merged rows (DuckDB over `weir views`) and every table's rows."""
    con = duckdb_with_views(job, data)
    out = {name: rows(con.sql(f"SELECT * FROM {name}"))
           for name in ("page_views", "revenue", "purchases")}
    duck = duckdb_connection()
    for table in ("raw", "dlq", "late"):
        path = table_path(data, "clickstream", table)
        out[table] = rows(duck.sql(f"SELECT * FROM delta_scan('{path}')"))
    return out


def test_maintain_folds_and_merges_without_changing_any_answer(tmp_path):
    job = fast_job(tmp_path / "job.toml")
    data = tmp_path / "data"
    weir("demo", "--job", job, "--seconds", 25, "--rate", 400, "--data", data, timeout=240)
    before = snapshot(job, data)
    files_before = {t: active_files(data, t) for t in TABLES}
    partials_before = json.loads(weir("query", "--job", job, "--data", data, "--format", "json",
                                      "SELECT count(*) AS n FROM page_views__partials").stdout)[0]
    with totals_never_change(job, data):
        report = weir("maintain", "--job", job, "--data", data, "--once", timeout=240).stdout
        weir("maintain", "--job", job, "--data", data, "--once", timeout=240)

    assert snapshot(job, data) == before, "maintenance changed what a reader sees"
    for table in TABLES:
        after = active_files(data, table)
        assert set(after.values()) == {1}, (table, after)
        assert files_before[table].total() > len(after), (table, files_before[table])
    partials_after = json.loads(weir("query", "--job", job, "--data", data, "--format", "json",
                                     "SELECT count(*) AS n FROM page_views__partials").stdout)[0]
    assert partials_after["n"] < partials_before["n"], report
    assert "page_views" in report and "→" in report, report
    # polars reads the maintained tables (checkpoint included) with every row.
    for table in TABLES:
        frame = pl.read_delta(str(table_path(data, "clickstream", table)))
        if table in ("raw", "dlq", "late"):
            assert frame.height == len(before[table]), table


def upkeep_job(tmp_path, broker, data, root=None):
    """The fast job against `broker`, with upkeep every second beside ingest."""
    job = write_job(tmp_path / "job.toml", broker, "clicks", data, max_events=100)
    text = fast_job(job, job.read_text()).read_text().replace('every = "10m"', 'every = "1s"')
    if root is not None:
        text = text.replace(f'root = "{data}"', f'root = "{root}"')
    job.write_text(text)
    return job


def produce_in_background(broker, report, rate, seconds):
    return spawn(
        [WEIR, "produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--rate", str(rate),
         "--seconds", str(seconds), "--late-ratio", "0", "--report", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_fold(log, proc, timeout=180):
    """Waits until a maintenance round of `proc` has folded closed windows: a
    round can take longer than the ingest (on a slow object store, say)."""
    deadline = time.monotonic() + timeout
    while "folded=Some" not in log.read_text():
        assert proc.poll() is None, f"weir run exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "no maintenance round folded closed windows"
        time.sleep(0.5)


def assert_upkeep_ran_and_outputs_exact(job, log, produced, late):
    """Upkeep folded windows and never failed; the outputs equal the oracle over
    the on-time events. With a 5 s lateness some stragglers are late: which
    ones is weir's call (`late`), and exactly those must be missing."""
    assert "maintenance round failed" not in log, log
    # Upkeep's commits never refuse ingest's: the job never restarts.
    assert "job failed" not in log, log
    assert "folded=Some" in log, "no maintenance round folded closed windows"
    assert late <= set(positions(produced, lambda k: k == "valid"))
    on_time = [dataclasses.replace(s, kind="late") if s.position in late else s for s in produced]
    assert_outputs_match_oracle(job, on_time, window_ms=10_000)


def test_run_with_frequent_maintenance_stays_exactly_once(broker, tmp_path):
    """`weir run` schedules maintenance every second beside ingest: folds and file
    merges commit between triggers, and every number still equals the oracle."""
    broker.create_topic("clicks", 3)
    data = tmp_path / "data"
    job = upkeep_job(tmp_path, broker, data)
    report = tmp_path / "produced.csv"
    producer = produce_in_background(broker, report, 300, 25)
    with open(tmp_path / "run.log", "w") as log:
        proc = start_run(job, log)
        assert producer.wait(timeout=120) == 0, producer.stdout.read()
        produced = read_report(report)
        wait_for_count(data, stored(produced), 120, proc)
        wait_for_fold(tmp_path / "run.log", proc)
        assert stop_gracefully(proc) == 0
    late_path = table_path(data, "clickstream", "late")
    late = set(duckdb_connection().sql(
        f"SELECT _partition, _offset FROM delta_scan('{late_path}')").fetchall())
    assert_upkeep_ran_and_outputs_exact(job, (tmp_path / "run.log").read_text(), produced, late)


def test_a_crash_anywhere_in_maintenance_changes_no_answer(tmp_path):
    """Injected crashes after each step of a table's upkeep, then SIGKILLs at
    random moments: every re-run finishes the work, and readers see the same
    rows throughout."""
    job = fast_job(tmp_path / "job.toml")
    data = tmp_path / "data"
    weir("demo", "--job", job, "--seconds", 20, "--rate", 400, "--data", data, timeout=240)
    before = snapshot(job, data)
    command = [WEIR, "maintain", "--job", str(job), "--data", str(data), "--once"]

    def unchanged(point="a SIGKILL"):
        assert snapshot(job, data) == before, f"a crash at {point} changed the answer"

    crash_after_each(command, [f"maintain.after_{p}" for p in
                               ("fold.page_views", "merge.revenue", "checkpoint.raw",
                                "vacuum.late")], unchanged)
    kill_at_random_moments(command, 4, 0.05, 0.6, unchanged)
    weir("maintain", "--job", job, "--data", data, "--once", timeout=240)
    assert snapshot(job, data) == before
    for table in TABLES:
        assert set(active_files(data, table).values()) == {1}, table


def data_files(path) -> set[str]:
    """The Parquet files under a table's folder, outside its log."""
    return {str(p.resolve()) for p in path.rglob("*.parquet") if "_delta_log" not in p.parts}


def test_vacuum_deletes_what_merges_removed(tmp_path):
    """With hot tables keeping removed files 0 s, one round of upkeep merges each
    table's small files and deletes the merged-away ones from storage: every
    Parquet file left is one the log holds, readers get every row, and each
    table's log keeps removals for the retention plus two rounds and ten minutes."""
    from deltalake import DeltaTable

    job = fast_job(tmp_path / "job.toml")
    job.write_text(job.read_text().replace('hot_vacuum_retention = "1h"',
                                           'hot_vacuum_retention = "0s"'))
    data = tmp_path / "data"
    weir("demo", "--job", job, "--seconds", 12, "--rate", 400, "--data", data, timeout=240)
    before = snapshot(job, data)
    paths = {t: table_path(data, "clickstream", t) for t in TABLES}
    files_before = {t: data_files(p) for t, p in paths.items()}
    weir("maintain", "--job", job, "--data", data, "--once", timeout=240)

    assert snapshot(job, data) == before, "maintenance changed what a reader sees"
    for table, path in paths.items():
        log = DeltaTable(str(path))
        active = {str(pathlib.Path(u.removeprefix("file://")).resolve()) for u in log.file_uris()}
        assert data_files(path) == active, table
        assert len(files_before[table]) > len(active), (table, files_before[table])
        retention = log.metadata().configuration["delta.deletedFileRetentionDuration"]
        assert retention == f"interval {2 * 600 + 600} seconds", (table, retention)


def test_vacuum_deletes_files_no_commit_holds_once_a_day_old(tmp_path):
    """A data file in a table's folder that no commit holds (a writer killed
    between writing it and committing it) is deleted by upkeep once it is a
    day old; a younger one is kept, since it may be about to be committed, and
    so are the files a merge removed within the retention. Readers see the
    same rows throughout."""
    job = fast_job(tmp_path / "job.toml")
    data = tmp_path / "data"
    weir("demo", "--job", job, "--seconds", 4, "--rate", 400, "--data", data, timeout=240)
    before = snapshot(job, data)
    paths = {t: table_path(data, "clickstream", t) for t in ("raw", "page_views")}
    files_before, old, young = {}, {}, {}
    two_days_ago = time.time() - 2 * 86400
    for table, path in paths.items():
        files_before[table] = data_files(path)
        # Beside a committed file: in its partition's folder, where a killed
        # trigger leaves its file.
        source = pathlib.Path(min(files_before[table]))
        old[table] = source.with_name("part-00000-orphan-old.snappy.parquet")
        young[table] = source.with_name("part-00000-orphan-young.snappy.parquet")
        for orphan in (old[table], young[table]):
            orphan.write_bytes(source.read_bytes())
        os.utime(old[table], (two_days_ago, two_days_ago))
    weir("maintain", "--job", job, "--data", data, "--once", timeout=240)

    assert snapshot(job, data) == before, "maintenance changed what a reader sees"
    for table, path in paths.items():
        assert not old[table].exists(), table
        assert young[table].exists(), table
        assert files_before[table] <= data_files(path), (table, "a committed or merged-away file went")
