"""weir against a real Apache Kafka broker process, read back by
DuckDB's delta extension and polars: a known set lands exactly once, and keeps
landing exactly once while the weir process is SIGKILLed again and again."""

import contextlib
import datetime
import json
import math
import os
import random
import signal
import subprocess
import time

from conftest import (WEIR, duckdb_connection, duckdb_offsets, duckdb_with_views, free_port,
                      polars_offsets, read_report, spawn, table_path, weir, write_job)



def committed_count(data, job="clickstream") -> int:
    """Rows in raw + dlq + late as DuckDB sees them; 0 before the tables exist."""
    con = duckdb_connection()
    total = 0
    for table in ("raw", "dlq", "late"):
        try:
            total += con.sql(
                f"SELECT count(*) FROM delta_scan('{table_path(data, job, table)}')").fetchone()[0]
        except Exception:
            return 0
    return total


def stored(report) -> int:
    """Messages that end up in raw, dlq or late: all but the re-sent duplicates."""
    return sum(1 for sent in report if sent.kind != "duplicate")


def positions(report, keep) -> list[tuple[int, int]]:
    return sorted(sent.position for sent in report if keep(sent.kind))


def wait_for_count(data, expected: int, timeout: float, proc) -> None:
    deadline = time.monotonic() + timeout
    while committed_count(data) < expected:
        assert proc.poll() is None, f"weir run exited early with {proc.returncode}"
        assert time.monotonic() < deadline, (
            f"only {committed_count(data)} of {expected} committed after {timeout}s")
        time.sleep(0.5)


def run_command(job):
    """`weir run` with its metrics on a free port: test processes may overlap."""
    return [WEIR, "run", str(job), "--metrics-addr", f"127.0.0.1:{free_port()}"]


def start_run(job, log):
    return spawn(run_command(job), stdout=log, stderr=subprocess.STDOUT)


def stop_gracefully(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


@contextlib.contextmanager
def running(job, log):
    """`weir run` for the `with` block; killed at its end if still running, so
    a failed assertion leaves no process behind to load the tests after it."""
    proc = start_run(job, log)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_exactly_once(data, report):
    """raw holds the on-time originals, late the late ones, dlq the malformed
    messages, each exactly once; re-sent duplicates are nowhere."""
    want = {
        "raw": positions(report, lambda k: k == "valid"),
        "late": positions(report, lambda k: k == "late"),
        "dlq": positions(report, lambda k: k.startswith("malformed")),
    }
    assert want["dlq"], "the stream must include malformed messages"
    for read in (duckdb_offsets, polars_offsets):
        for table, expected in want.items():
            got = read(data, "clickstream", table)
            assert len(got) == len(set(got)), f"{read.__name__}: {table} holds duplicates"
            assert got == expected, f"{read.__name__}: {table} differs from the report"


def event_ms(ts) -> int:
    if isinstance(ts, int):
        return ts
    t = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return (t - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)) // \
        datetime.timedelta(milliseconds=1)


def oracle(report, window_ms=60_000):
    """Per (window, page, country): page views, visitors, purchases and revenue,
    computed here from the producer's own messages (the on-time originals), not
    by weir."""
    views, visitors, purchases, revenue, purchase_ids = {}, {}, {}, {}, []
    for sent in report:
        if sent.kind != "valid":
            continue
        event = json.loads(sent.payload)
        key = (event_ms(event["ts"]) // window_ms * window_ms, event.get("page"),
               event.get("country"))
        if event.get("action") == "view":
            views[key] = views.get(key, 0) + 1
            if event.get("user_id") is not None:
                visitors.setdefault(key, set()).add(event["user_id"])
        elif event.get("action") == "purchase":
            purchases[key] = purchases.get(key, 0) + 1
            purchase_ids.append(event["event_id"])
            if event.get("price") is not None:
                revenue[key] = revenue.get(key, 0.0) + event["price"]
    visitors = {k: len(visitors.get(k, ())) for k in views}
    return views, visitors, purchases, revenue, sorted(purchase_ids)


def assert_outputs_match_oracle(job, report, window_ms=60_000):
    """The outputs' merged views, as `weir views --dialect duckdb` defines them
    and DuckDB computes them, equal the oracle row for row."""
    views, visitors, purchases, revenue, purchase_ids = oracle(report, window_ms)
    con = duckdb_with_views(job)
    got = con.sql("SELECT epoch_ms(window_start), page, country, views, visitors "
                  "FROM page_views").fetchall()
    assert {(w, p, c): v for w, p, c, v, _ in got} == views and len(got) == len(views) > 10
    assert {(w, p, c): u for w, p, c, _, u in got} == visitors
    assert any(u < v for *_, v, u in got), "some visitor viewed a page twice in a minute"
    got = con.sql("SELECT epoch_ms(window_start), page, country, purchases, revenue "
                  "FROM revenue").fetchall()
    assert {(w, p, c): n for w, p, c, n, _ in got} == purchases and len(got) == len(purchases)
    for w, p, c, _, r in got:
        want = revenue.get((w, p, c))
        assert (r is None and want is None) or math.isclose(r, want, rel_tol=1e-9), (w, p, c)
    got = [row[0] for row in con.sql("SELECT event_id FROM purchases ORDER BY 1").fetchall()]
    assert got == purchase_ids and got


def test_known_set_lands_exactly_once(broker, tmp_path):
    broker.create_topic("clicks", 3)
    data = tmp_path / "data"
    report = tmp_path / "produced.csv"
    # No late events: before the first batch there is no watermark to be late for.
    weir("produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--count", 3000,
         "--malformed-ratio", 0.02, "--duplicate-ratio", 0.02, "--late-ratio", 0, "--seed", 3,
         "--report", report, timeout=120)
    produced = read_report(report)
    assert len(produced) == 3000

    job = write_job(tmp_path / "job.toml", broker, "clicks", data)
    with open(tmp_path / "run.log", "w") as log:
        proc = start_run(job, log)
        wait_for_count(data, stored(produced), 120, proc)
        assert stop_gracefully(proc) == 0, (tmp_path / "run.log").read_text()
    assert_exactly_once(data, produced)
    assert_outputs_match_oracle(job, produced)


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
    injected right after the raw or the page_views commit of a random trigger.
    The stream has late events, so a restart must also judge re-read events
    exactly as before the crash; the outputs must equal the oracle."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"kill schedule seed: {seed}")
    broker.create_topic("clicks", 3)
    data = tmp_path / "data"
    report = tmp_path / "produced.csv"
    job = write_job(tmp_path / "job.toml", broker, "clicks", data, max_events=100)
    # A warm-up stream without late events gives every partition a clock, so
    # the job has a watermark before the first late event arrives.
    warmup = tmp_path / "warmup.csv"
    weir("produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--count", 300,
         "--late-ratio", 0, "--report", warmup, timeout=120)
    with open(tmp_path / "run.log", "w") as log:
        proc = start_run(job, log)
        wait_for_count(data, stored(read_report(warmup)), 120, proc)
        assert stop_gracefully(proc) == 0
    producer = spawn(
        [WEIR, "produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--rate", "300",
         "--seconds", "45", "--malformed-ratio", "0.02", "--duplicate-ratio", "0.02",
         "--late-ratio", "0.03", "--report", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    kills = 0
    with open(tmp_path / "run.log", "a") as log:
        while producer.poll() is None and kills < 7:
            if kills % 3 == 2:
                hit = rng.randint(1, 5)
                table = rng.choice(["raw", "page_views"])
                env = {**os.environ, "WEIR_FAULTS": f"sink.after_commit.{table}@{hit}:crash"}
                proc = spawn(run_command(job), stdout=log,
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
        produced = read_report(warmup) + read_report(report)

        proc = start_run(job, log)
        wait_for_count(data, stored(produced), 180, proc)
        time.sleep(1)  # let a stray late commit show itself before checking
        assert stop_gracefully(proc) == 0
    assert "injected crash at sink.after_commit" in (tmp_path / "run.log").read_text()
    assert_exactly_once(data, produced)
    assert_outputs_match_oracle(job, produced)


def test_default_batching_commits_once_a_second_and_merges_small_files(broker, tmp_path):
    """The example job's default batching (one batch a second) against a steady
    stream: each table commits at most about once a second, a table with no
    rows (`late`: nothing is late) commits nothing at all, the hot tables'
    small files are merged while ingest runs, memory stays under a generous
    bound, and every event still lands exactly once. Behaviour only: how fast
    is measured in benches/, not here."""
    from deltalake import DeltaTable

    broker.create_topic("clicks", 3)
    data = tmp_path / "data"
    report = tmp_path / "produced.csv"
    job = write_job(tmp_path / "job.toml", broker, "clicks", data, max_events=100000,
                    interval_ms=1000)
    job.write_text(job.read_text().replace(
        "target_file_mib = 128", "target_file_mib = 128\ncompact_after_files = 10"))
    seconds = 25
    with open(tmp_path / "run.log", "w") as log:
        proc = start_run(job, log)
        started = time.monotonic()
        weir("produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--rate", 2000,
             "--seconds", seconds, "--malformed-ratio", 0.02, "--duplicate-ratio", 0.02,
             "--late-ratio", 0, "--report", report, timeout=seconds + 60)
        produced = read_report(report)
        wait_for_count(data, stored(produced), 120, proc)
        # The merge looks every 10 s: let it catch up with the last files.
        time.sleep(12)
        peak_kib = int(next(line.split()[1] for line in
                            open(f"/proc/{proc.pid}/status") if line.startswith("VmHWM")))
        elapsed = time.monotonic() - started
        assert stop_gracefully(proc) == 0, (tmp_path / "run.log").read_text()
    assert_exactly_once(data, produced)
    assert_outputs_match_oracle(job, produced)

    tables = {name: DeltaTable(str(table_path(data, "clickstream", name)))
              for name in ("raw", "dlq", "late", "page_views")}
    commits = {name: sum(1 for entry in t.history() if entry["operation"] == "WRITE")
               for name, t in tables.items()}
    assert 0 < commits["raw"] <= elapsed * 1.1 + 2, (commits, elapsed)
    assert 0 < commits["dlq"] <= commits["raw"] and commits["page_views"] <= commits["raw"]
    assert commits["late"] == 0, "a table with no rows makes no commit"
    log = (tmp_path / "run.log").read_text()
    assert "small files merged" in log, log
    for name in ("raw", "page_views"):
        live = len(tables[name].file_uris())
        assert live < 10 + 4, f"{name}: {live} files after {commits[name]} appends"
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib} KiB"
