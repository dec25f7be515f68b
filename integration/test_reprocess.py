"""`weir reprocess` and `weir verify`: an output's definition changes, one day of
several is rebuilt from raw (in every tier, locally and on S3) and equals an
independent computation under the new definition; the other days keep their
very files; SIGKILLs mid-way change nothing a re-run does not finish; a second
run changes nothing; verify finds exactly the rows the change touched. Also:
live ingest beside a reprocess, and schema evolution."""

import datetime
import json
import os
import subprocess
import tempfile
import time

import polars as pl
import pytest

from conftest import (WEIR, clickstream_job, crash_after_each, kill_at_random_moments, read_report,
                      spawn, weir, write_job)
from test_broker_e2e import (event_ms, oracle, start_run, stop_gracefully,
                             stored, wait_for_count)
from test_operate import rss_peak_mib

NEW_FILTER = "action = 'view' AND country <> 'US'"


def history_job(path, warm_root=None, cold_root=None, filter=None, payload=None):
    """The clickstream job with tiers sized for four days of history: hot keeps
    30 h, warm 2 days, cold the rest."""
    replacements = [('max_age = "24h"', 'max_age = "30h"'),
                    ('max_age = "30days"', 'max_age = "2days"')]
    if filter:
        replacements.append(("filter = \"action = 'view'\"", f'filter = "{filter}"'))
    if payload:
        replacements.append(("[schema]", f'[schema]\npayload = "{payload}"'))
    return clickstream_job(path, replacements, warm_root, cold_root)


def query(job, data, sql):
    return json.loads(weir("query", "--job", job, "--data", data, "--format", "json",
                           sql, timeout=120).stdout)


def day_bounds(day: datetime.date):
    start = datetime.datetime.combine(day, datetime.time(), datetime.timezone.utc)
    return start, start + datetime.timedelta(days=1)


def outputs_by_day(job, data):
    """Every output's final rows, grouped by the date they belong to."""
    out = {}
    for output, columns, clock in (
            ("page_views", "page, country, views, visitors", "window_start"),
            ("revenue", "page, country, purchases, round(revenue, 6) AS revenue", "window_start"),
            ("purchases", "event_id, price", "ts")):
        sql = f"SELECT CAST({clock} AS BIGINT) AS w, {columns} FROM {output}"
        names = ["w"] + [c.split(" AS ")[-1].strip() for c in columns.split(",")]
        for row in query(job, data, sql):
            day = datetime.datetime.fromtimestamp(row["w"] / 1e6, datetime.timezone.utc).date()
            # JSON output leaves out nulls.
            out.setdefault((output, day), []).append(tuple(row.get(n) for n in names))
    return {k: sorted(v, key=repr) for k, v in out.items()}


def tier_roots(data, warm_root, cold_root):
    return {"hot": str(data / "hot"), "warm": warm_root or str(data / "warm"),
            "cold": cold_root or str(data / "cold")}


def storage_options():
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


def files_by_day(roots, table):
    """Per tier, the set of active data files of `table`, by the date partition."""
    from deltalake import DeltaTable

    files = {}
    for tier, root in roots.items():
        uri = f"{root}/clickstream/{table}"
        for f in DeltaTable(uri, storage_options=storage_options()).file_uris():
            day = f.split("_event_date=")[1][:10]
            files.setdefault(day, set()).add(f)
    return files


def raw_frame(roots):
    """raw from every tier, read by polars where each tier lives."""
    return pl.concat([pl.read_delta(f"{root}/clickstream/raw", storage_options=storage_options())
                      .select("ts", "page", "country", "action", "user_id")
                      for root in roots.values()])


def expected_page_views(raw, day):
    """page_views under NEW_FILTER for `day`, computed by polars from raw."""
    start, end = day_bounds(day)
    frame = (raw.filter((pl.col("ts") >= start) & (pl.col("ts") < end) &
                        (pl.col("action") == "view") & (pl.col("country") != "US"))
             .group_by(pl.col("ts").dt.truncate("1m").alias("w"), "page", "country")
             .agg(pl.len().alias("views"),
                  pl.col("user_id").drop_nulls().n_unique().alias("visitors")))
    return sorted(((int(w.timestamp() * 1e6), p, c, v, u)
                   for w, p, c, v, u in frame.iter_rows()), key=repr)


def dropped_groups(raw, day):
    """(minute, page, country) groups of page views on `day` that NEW_FILTER
    drops: US ones, and those without a country (NULL <> 'US' is not true)."""
    start, end = day_bounds(day)
    return raw.filter((pl.col("ts") >= start) & (pl.col("ts") < end) &
                      (pl.col("action") == "view") &
                      ((pl.col("country") == "US") | pl.col("country").is_null())).select(
        pl.col("ts").dt.truncate("1m"), "page", "country").unique().height


def verify_counts(stdout, output):
    """The (live, reprocessed, only live, only reprocessed, differing) row of `output`."""
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0] == output:
            return tuple(int(x) for x in parts[1:6])
    raise AssertionError(f"no line for {output} in:\n{stdout}")


@pytest.mark.parametrize("remote", [False, True], ids=["local", "s3"])
def test_reprocess_one_day_under_a_new_definition(remote, request, tmp_path, monkeypatch):
    roots = {}
    if remote:
        bucket = request.getfixturevalue("s3")
        roots = {"warm_root": f"{bucket}/warm", "cold_root": f"{bucket}/cold"}
    old = history_job(tmp_path / "old.toml", **roots)
    new = history_job(tmp_path / "new.toml", filter=NEW_FILTER, **roots)
    data = tmp_path / "data"
    weir("demo", "--job", old, "--seconds", 6, "--rate", 2000, "--backfill", "4days",
         "--data", data, timeout=240)
    weir("maintain", "--job", old, "--data", data, "--once", timeout=240)
    tiers = tier_roots(data, roots.get("warm_root"), roots.get("cold_root"))
    day = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)).date()
    span = ["--from", day.isoformat(), "--to", day.isoformat()]
    before = outputs_by_day(old, data)
    files_before = files_by_day(tiers, "page_views")
    raw = raw_frame(tiers)

    # The untouched range verifies clean; under the new filter, verify finds
    # exactly the US groups (only in live), and nothing else.
    assert "no differences" in weir("verify", "--job", old, "--data", data, *span,
                                    timeout=240).stdout
    changed = subprocess.run([WEIR, "verify", "--job", new, "--data", data, *span],
                             capture_output=True, text=True, timeout=240)
    assert changed.returncode == 1, changed.stderr
    live, rebuilt, only_live, only_new, differing = verify_counts(changed.stdout, "page_views")
    assert only_live == dropped_groups(raw, day) > 0 and only_new == 0 and differing == 0
    assert live == len(before[("page_views", day)]) and rebuilt == live - only_live
    assert verify_counts(changed.stdout, "revenue")[2:] == (0, 0, 0)
    assert "only live:" in changed.stdout and "country=US" in changed.stdout

    dry = weir("reprocess", "--job", new, "--data", data, *span, "--dry-run").stdout
    assert "would replace" in dry and outputs_by_day(old, data) == before

    # Crashes right after a commit, and SIGKILLs at random moments. A killed
    # run leaves its stage in the temporary folder; the next run removes it.
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    command = [WEIR, "reprocess", "--job", str(new), "--data", str(data), *span]
    crash_after_each(command, ["reprocess.after_commit.page_views.warm",
                               "reprocess.after_commit.revenue.warm"])
    assert len(list(temporary.glob("weir-stage-*"))) == 1, "the last crash's stage"
    kill_at_random_moments(command, 3, 0.2, 1.5)
    report = weir(*command[1:], timeout=240).stdout
    assert "replaced" in report, report
    assert not list(temporary.glob("weir-stage-*")), list(temporary.iterdir())

    after = outputs_by_day(new, data)
    assert after[("page_views", day)] == expected_page_views(raw, day)
    for key in set(before) | set(after):
        if key != ("page_views", day):
            assert after.get(key) == before.get(key), f"{key} changed"
    files_after = files_by_day(tiers, "page_views")
    assert set(files_after) == set(files_before)
    for d in files_before:
        if d != day.isoformat():
            assert files_after[d] == files_before[d], f"the files of {d} changed"
    assert files_after[day.isoformat()] != files_before[day.isoformat()]

    # A second run writes the same rows; verify under the new definition is clean.
    weir(*command[1:], timeout=240)
    assert outputs_by_day(new, data) == after
    assert "no differences" in weir("verify", "--job", new, "--data", data, *span,
                                    timeout=240).stdout

    # Each reprocess commit names its range, the job spec and weir's version.
    from deltalake import DeltaTable

    commit = DeltaTable(f"{tiers['warm']}/clickstream/page_views",
                        storage_options=storage_options()).history(1)[0]
    assert commit["weir.operation"] == "reprocess", commit
    assert commit["weir.range"] == f"{day}..{day}" and len(commit["weir.jobSpecHash"]) == 16
    assert commit["weir.version"]

    # A range live ingest may still write into is refused, with the reason.
    today = datetime.date.today().isoformat()
    refused = subprocess.run([WEIR, "reprocess", "--job", str(new), "--data", str(data),
                              "--from", today, "--to", today], capture_output=True, text=True)
    assert refused.returncode == 1 and "is not closed yet" in refused.stderr, refused.stderr


MEMORY_MIB = 16
RSS_BOUND_MIB = 300


def peak_rss(*args) -> tuple[str, float]:
    """Runs weir to completion; its stdout and its own peak RSS in MiB: the
    last VmHWM read while it ran (sampled every 50 ms). Not getrusage's
    ru_maxrss: Linux keeps a high-water mark across exec, so a child forked
    from a large pytest process would report pytest's size."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = spawn([WEIR, *map(str, args)], stdout=out, stderr=err, text=True)
        peak = 0.0
        while proc.poll() is None:
            try:
                peak = rss_peak_mib(proc.pid)
            except (OSError, AssertionError):
                pass  # exiting: no memory left to read
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        assert proc.returncode == 0, f"weir {args} failed:\n{out.read()}\n{err.read()}"
        assert peak > 0, "no VmHWM read"
        return out.read(), peak


def test_reprocess_and_verify_hold_bounded_memory_on_a_day_20_times_larger(tmp_path):
    """A day of raw whose events take more than 20× --memory-mib as Arrow is
    reprocessed and verified with peak RSS under RSS_BOUND_MIB (the process's
    own ~110 MiB, the bound, a few batches): the sort of raw spills and the
    rebuilt rows are staged on disk. Holding the day, as reprocess did, would
    need more than the day itself. Verify finds the live tables equal."""
    job = history_job(tmp_path / "job.toml")
    data = tmp_path / "data"
    weir("demo", "--job", job, "--seconds", 80, "--rate", 50000, "--partitions", 8,
         "--backfill", "3days", "--data", data, timeout=600)
    # The fullest day the watermark has closed (every window in it ended,
    # with the allowed lateness): which day that is depends on the time of
    # day the test runs and on how far the producer got at this rate.
    [closed] = query(job, data, (
        "WITH clock AS (SELECT min(newest) AS w FROM "
        "(SELECT _partition, max(ts) AS newest FROM raw GROUP BY _partition)) "
        "SELECT CAST(_event_date AS VARCHAR) AS day, count(*) AS n FROM raw, clock "
        "WHERE CAST(_event_date AS TIMESTAMP) + INTERVAL '1 day 2 minutes' <= clock.w "
        "GROUP BY _event_date ORDER BY n DESC LIMIT 1"))
    day = closed["day"]
    span = ["--from", day, "--to", day, "--memory-mib", MEMORY_MIB]
    report, reprocess_peak = peak_rss("reprocess", "--job", job, "--data", data, *span)
    assert "reprocessed" in report, report
    day_mib = int(report.split("the largest day ")[1].split(" MiB")[0])
    assert day_mib >= 20 * MEMORY_MIB, report
    checked, verify_peak = peak_rss("verify", "--job", job, "--data", data, *span)
    assert "no differences" in checked, checked
    print(f"a day of {day_mib} MiB: peak RSS {reprocess_peak:.0f} MiB (reprocess), "
          f"{verify_peak:.0f} MiB (verify)")
    assert reprocess_peak < RSS_BOUND_MIB and verify_peak < RSS_BOUND_MIB
    assert RSS_BOUND_MIB < day_mib, "the bound must be one holding the day would break"


def test_a_job_that_keeps_no_payloads_reprocesses_from_the_columns(tmp_path):
    """`schema.payload = "none"`: raw's `_payload` is null in every tier, and a
    reprocess under a new filter rebuilds the day from the stored columns,
    equal to polars' computation, saying so."""
    old = history_job(tmp_path / "old.toml", payload="none")
    new = history_job(tmp_path / "new.toml", filter=NEW_FILTER, payload="none")
    data = tmp_path / "data"
    weir("demo", "--job", old, "--seconds", 4, "--rate", 2000, "--backfill", "4days",
         "--data", data, timeout=240)
    weir("maintain", "--job", old, "--data", data, "--once", timeout=240)
    tiers = tier_roots(data, None, None)
    payloads = pl.concat([pl.read_delta(f"{root}/clickstream/raw").select("_payload")
                          for root in tiers.values()])
    assert payloads.height > 0 and payloads["_payload"].null_count() == payloads.height

    day = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)).date()
    span = ["--from", day.isoformat(), "--to", day.isoformat()]
    report = weir("reprocess", "--job", new, "--data", data, *span, timeout=240).stdout
    assert "replaced" in report and "have no payload in raw" in report, report
    after = outputs_by_day(new, data)
    assert after[("page_views", day)] == expected_page_views(raw_frame(tiers), day)


def test_a_move_that_raced_a_reprocess_moves_the_reprocessed_rows(tmp_path):
    """A move copies page_views rows to warm while a reprocess (stalled between
    planning and committing) replaces them in hot, and the move crashes before
    deleting from hot. Finishing the move must not delete the reprocessed rows
    and keep the stale copies: it drops the copies and moves again."""
    old = history_job(tmp_path / "old.toml")
    new = history_job(tmp_path / "new.toml", filter=NEW_FILTER)
    data = tmp_path / "data"
    weir("demo", "--job", old, "--seconds", 4, "--rate", 2000, "--backfill", "4days",
         "--data", data, timeout=240)
    tiers = tier_roots(data, None, None)
    day = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)).date()
    span = ["--from", day.isoformat(), "--to", day.isoformat(), "--output", "page_views"]
    before = outputs_by_day(old, data)

    stalled = spawn(
        [WEIR, "reprocess", "--job", str(new), "--data", str(data), *span],
        env={**os.environ, "WEIR_FAULTS": "reprocess.after_plan.page_views@1:sleep=8000"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)  # planned: every row of the range is hot
    env = {**os.environ, "WEIR_FAULTS": "maintain.after_move_write.page_views@1:crash"}
    mover = subprocess.run([WEIR, "maintain", "--job", str(old), "--data", str(data), "--once"],
                           env=env, capture_output=True, text=True, timeout=240)
    assert "injected crash" in mover.stderr, mover.stderr
    out, err = stalled.communicate(timeout=240)
    assert stalled.returncode == 0 and "injected stall" in err, err
    refused = subprocess.run([WEIR, "reprocess", "--job", str(new), "--data", str(data), *span],
                             capture_output=True, text=True)
    assert "move of page_views from hot to warm is unfinished" in refused.stderr, refused.stderr

    weir("maintain", "--job", old, "--data", data, "--once", timeout=240)
    after = outputs_by_day(new, data)
    assert after[("page_views", day)] == expected_page_views(raw_frame(tiers), day)
    for key in before:
        if key[0] != "page_views" or key[1] != day:
            assert after.get(key) == before[key], key
    counts = query(new, data, "SELECT (SELECT count(*) FROM page_views__partials__warm) AS warm")
    assert counts[0]["warm"] > 0


def produce(broker, report, *args):
    weir("produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--report", report,
         "--late-ratio", 0, *args, timeout=180)
    return read_report(report)


def day_of(sent) -> datetime.date:
    ms = event_ms(json.loads(sent.payload)["ts"])
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).date()


def test_reprocess_beside_live_ingest_and_late_events(broker, tmp_path):
    """While `weir run` ingests new events, one past day is reprocessed under a
    new definition and events for that day arrive late. The day's outputs are
    the new definition over exactly the events raw held; every other window is
    the old definition over everything ingested; the late events are in `late`
    and nowhere else; raw holds every on-time event once."""
    broker.create_topic("clicks", 3)
    data = tmp_path / "data"
    old = write_job(tmp_path / "old.toml", broker, "clicks", data)
    new = tmp_path / "new.toml"
    new.write_text(old.read_text().replace("filter = \"action = 'view'\"",
                                           f'filter = "{NEW_FILTER}"'))
    history = produce(broker, tmp_path / "history.csv", "--count", 3000, "--backfill", "3days")
    day = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)).date()
    assert any(day_of(s) == day for s in history if s.kind == "valid")

    with open(tmp_path / "run.log", "w") as log:
        proc = start_run(old, log)
        wait_for_count(data, stored(history), 120, proc)
        live = spawn(
            [WEIR, "produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--rate", "100",
             "--seconds", "15", "--late-ratio", "0", "--report", str(tmp_path / "live.csv")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        # Events for the past days arrive now: behind the watermark.
        stragglers = produce(broker, tmp_path / "late.csv", "--count", 40, "--backfill", "3days",
                             "--duplicate-ratio", 0, "--malformed-ratio", 0)
        for _ in range(2):
            weir("reprocess", "--job", new, *["--from", day.isoformat(), "--to", day.isoformat()],
                 timeout=240)
        assert live.wait(timeout=60) == 0
        everything = history + read_report(tmp_path / "live.csv") + stragglers
        wait_for_count(data, stored(everything), 120, proc)
        assert stop_gracefully(proc) == 0, (tmp_path / "run.log").read_text()

    late = set(pl.read_delta(str(data / "hot/clickstream/late"))
               .select("_partition", "_offset").iter_rows())
    raw = pl.read_delta(str(data / "hot/clickstream/raw"))
    raw_positions = sorted(raw.select("_partition", "_offset").iter_rows())
    assert len(raw_positions) == len(set(raw_positions))
    for s in stragglers:
        if day_of(s) == day:
            assert s.position in late, "an event for the reprocessed day is not in late"
    # raw: every valid event not judged late, once. (A re-send that comes after
    # its original left the dedup horizon is late, not a duplicate.)
    on_time = [s for s in everything if s.kind == "valid" and s.position not in late]
    assert raw_positions == sorted(s.position for s in on_time)
    assert late <= {s.position for s in everything if s.kind in ("valid", "duplicate")}

    views, visitors, *_ = oracle(on_time)
    start, end = (int(t.timestamp() * 1000) for t in day_bounds(day))
    for key in list(views):
        if start <= key[0] < end and (key[2] is None or key[2] == "US"):
            del views[key]  # the new definition drops them on the reprocessed day
    got = query(new, data, "SELECT CAST(window_start AS BIGINT) / 1000 AS w, page, country, "
                           "views, visitors FROM page_views")
    got_views = {(r["w"], r.get("page"), r.get("country")): r["views"] for r in got}
    assert got_views == views and len(got) == len(views)
    assert {(r["w"], r.get("page"), r.get("country")): r["visitors"] for r in got} == \
        {k: visitors[k] for k in views}


def test_schema_evolution_adds_a_field_and_reprocess_fills_it(broker, tmp_path):
    """A producer already sends `referrer`; the job declares it later. raw and
    the purchases output gain a nullable column without rewriting a file; old
    rows read null, messages of the old contract are still accepted, and a
    reprocess fills purchases' referrer for past days from the raw payloads.
    A type change or a new event ID is refused with the way to migrate."""
    broker.create_topic("clicks", 2)
    data = tmp_path / "data"
    v1 = write_job(tmp_path / "v1.toml", broker, "clicks", data)
    text = v1.read_text()
    v2_text = text.replace(
        '{ name = "price",    type = "float64" },',
        '{ name = "price",    type = "float64" },\n  { name = "referrer", type = "string" },'
    ).replace("round(price * 1.19, 2) AS price_gross",
              "round(price * 1.19, 2) AS price_gross, referrer")
    assert v2_text != text
    v2 = tmp_path / "v2.toml"
    v2.write_text(v2_text)

    def ingest(job, reports, name):
        with open(tmp_path / f"{name}.log", "w") as log:
            proc = start_run(job, log)
            wait_for_count(data, stored(reports), 120, proc)
            assert stop_gracefully(proc) == 0, (tmp_path / f"{name}.log").read_text()

    # History sent by a producer that already has `referrer`, ingested under v1.
    history = produce(broker, tmp_path / "history.csv", "--job", v2, "--count", 1500,
                      "--backfill", "3days", "--duplicate-ratio", 0)
    ingest(v1, history, "v1")
    files = {str(f) for f in (data / "hot/clickstream/raw").rglob("*.parquet")}
    assert "referrer" not in pl.read_delta(str(data / "hot/clickstream/raw")).columns

    # v2: new events with `referrer`, and events of the old contract without it.
    newer = produce(broker, tmp_path / "v2.csv", "--job", v2, "--count", 300)
    older = produce(broker, tmp_path / "v1.csv", "--job", v1, "--count", 300)
    ingest(v2, history + newer + older, "v2")
    raw = pl.read_delta(str(data / "hot/clickstream/raw")).select("event_id", "referrer")
    assert {str(f) for f in (data / "hot/clickstream/raw").rglob("*.parquet")} >= files
    referrers = dict(raw.iter_rows())
    sent = {json.loads(s.payload)["event_id"]: json.loads(s.payload).get("referrer")
            for s in history + newer + older if s.kind == "valid"}
    assert set(referrers) == set(sent), "raw holds every valid event of both contracts"
    for batch, expect in ((history, lambda e: None), (older, lambda e: None),
                          (newer, lambda e: sent[e])):
        for s in batch:
            if s.kind == "valid":
                event_id = json.loads(s.payload)["event_id"]
                assert referrers[event_id] == expect(event_id), event_id
    assert any(referrers[json.loads(s.payload)["event_id"]] for s in newer if s.kind == "valid")

    # Reprocess the closed past days: purchases' referrer comes from the payloads.
    first = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=3)).date()
    last = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)).date()
    weir("reprocess", "--job", v2, "--from", first.isoformat(), "--to", last.isoformat(),
         "--output", "purchases", timeout=240)
    purchases = dict(pl.read_delta(str(data / "hot/clickstream/purchases"))
                     .select("event_id", "referrer").iter_rows())
    past = [s for s in history if s.kind == "valid" and first <= day_of(s) <= last
            and json.loads(s.payload).get("action") == "purchase"]
    assert past and all(purchases[json.loads(s.payload)["event_id"]] ==
                        sent[json.loads(s.payload)["event_id"]] for s in past)
    assert any(purchases[json.loads(s.payload)["event_id"]] for s in past)

    # Changes the stored tables cannot take are refused before anything runs.
    for change, message in (
            (('{ name = "price",    type = "float64" }', '{ name = "price",    type = "int64" }'),
             "price_v2"),
            (('event_id = "event_id"', 'event_id = "user_id"'), "event ID")):
        bad = tmp_path / "bad.toml"
        bad.write_text(v2_text.replace(*change))
        result = subprocess.run([WEIR, "run", str(bad)], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_reprocess_that_would_empty_a_day_is_refused_without_force(tmp_path):
    """The contract tightened to `event_time_range = "2days"`: the events of
    three days before they were sent no longer pass, and a reprocess of their
    day would replace its rows with nothing. It is refused (exit 2, naming the
    table, both counts and the contract's first refusal) and changes nothing;
    --dry-run says so; --force replaces anyway. (Ranges are judged against
    each event's Kafka timestamp, not today: decode's unit tests.)"""
    old = history_job(tmp_path / "old.toml")
    tight = clickstream_job(tmp_path / "tight.toml", [
        ('max_age = "24h"', 'max_age = "30h"'), ('max_age = "30days"', 'max_age = "2days"'),
        ('event_time_range = "10years"', 'event_time_range = "2days"')])
    data = tmp_path / "data"
    weir("demo", "--job", old, "--seconds", 4, "--rate", 1000, "--backfill", "4days",
         "--data", data, timeout=240)
    day = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=3)).date()
    span = ["--from", day.isoformat(), "--to", day.isoformat()]
    before = outputs_by_day(old, data)
    assert before[("page_views", day)]

    refused = subprocess.run([WEIR, "reprocess", "--job", tight, "--data", data, *span],
                             capture_output=True, text=True, timeout=240)
    assert refused.returncode == 2, refused.stderr
    assert "losing more than half" in refused.stderr and "--force" in refused.stderr
    assert "outside the accepted range" in refused.stderr, refused.stderr
    assert outputs_by_day(old, data) == before

    dry = weir("reprocess", "--job", tight, "--data", data, *span, "--dry-run").stdout
    assert "loses more than half" in dry, dry
    forced = weir("reprocess", "--job", tight, "--data", data, *span, "--force").stdout
    assert "replaced" in forced
    assert ("page_views", day) not in outputs_by_day(old, data)
