"""Session windows on Apache Kafka: per user, events less than 2 s apart are
one session. Each trigger stores its fragments; the views join them. Through
a SIGKILL mid-stream, and again after upkeep folded the closed sessions,
DuckDB running `weir views` and `weir query` both give the sessions computed
here from the producer's own events."""

import json
import threading

from conftest import WEIR, duckdb_connection, duckdb_with_views, table_path, weir, write_job
from test_broker_e2e import event_ms
from test_operate import committed, ingested, killed_once, running

GAP_MS = 2000
SELECT = ("SELECT epoch_ms(window_start), epoch_ms(window_end), user_id, events, "
          "round(spent, 6) FROM visits ORDER BY user_id, 1")


def oracle(report, on_time):
    """Per user: sorted event times, a new session after more than 2 s, over
    the producer's events that weir stored on time (`on_time`: their IDs;
    the rest are in `late`, behind a watermark only 1 s behind)."""
    by_user = {}
    for sent in report:
        if sent.kind != "valid":
            continue
        event = json.loads(sent.payload)
        if event["event_id"] not in on_time:
            continue
        # Events without a user are one key of their own, as SQL groups NULLs.
        by_user.setdefault(event.get("user_id"), []).append(
            (event_ms(event["ts"]), event.get("price")))
    sessions = []
    for user, events in by_user.items():
        events.sort(key=lambda e: e[0])
        current = None
        for t, price in events:
            if current and t <= current["last"] + GAP_MS:
                current["last"] = t
            else:
                if current:
                    sessions.append(current)
                current = {"user": user, "start": t, "last": t, "events": 0, "prices": []}
            current["events"] += 1
            if price is not None:
                current["prices"].append(price)
        sessions.append(current)
    return ordered((s["user"], s["start"], s["last"] + GAP_MS, s["events"],
                    round(sum(s["prices"]), 6) if s["prices"] else None) for s in sessions)


def ordered(sessions):
    return sorted(sessions, key=lambda s: (s[0] or "", s[1]))


def from_duckdb(job, data):
    rows = duckdb_with_views(job, data).sql(SELECT).fetchall()
    return ordered((user, start, end, n, spent) for start, end, user, n, spent in rows)


def from_weir_query(job, data):
    sql = ("SELECT CAST(window_start AS BIGINT) / 1000 AS s, CAST(window_end AS BIGINT) / 1000 "
           "AS e, user_id, events, round(spent, 6) AS spent FROM visits")
    rows = json.loads(weir("query", "--job", job, "--data", data, "--format", "json",
                           sql).stdout)
    return ordered((r["user_id"], r["s"], r["e"], r["events"], r["spent"]) for r in rows)


def test_sessions_are_exact_through_a_kill_and_a_fold(broker, tmp_path):
    broker.create_topic("clicks", 3)
    data = tmp_path / "data"
    job = write_job(tmp_path / "clicks.toml", broker, "clicks", data)
    job.write_text(job.read_text().replace('allowed_lateness = "1m"', 'allowed_lateness = "1s"')
                   + f"""
[[outputs]]
name = "visits"
window = {{ session_gap = "{GAP_MS // 1000}s" }}
keys = ["user_id"]
aggregates = [
  {{ name = "events", fn = "count" }},
  {{ name = "spent", fn = "sum", field = "price" }},
]
""")
    report = tmp_path / "sent.csv"
    producer = threading.Thread(target=lambda: weir(
        "produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--report", report,
        "--count", 3000, "--rate", 500, "--late-ratio", 0, timeout=180))
    command = [WEIR, "run", str(job), "--metrics-addr", "127.0.0.1:0"]
    producer.start()
    # A SIGKILL once a sixth of the stream is stored.
    killed_once(command, tmp_path / "run-1.log",
                lambda: committed(data, "clickstream") > 500, "the first events")
    with running(command, tmp_path / "run-2.log") as second:
        sent = ingested(data, producer, report, second)

    on_time = {row[0] for row in duckdb_connection().sql(
        f"SELECT event_id FROM delta_scan('{table_path(data, 'clickstream', 'raw')}')").fetchall()}
    want = oracle(sent, on_time)
    assert len(want) > 100 and any(s[3] > 1 for s in want), want[:5]
    assert from_duckdb(job, data) == want
    assert from_weir_query(job, data) == want
    # Upkeep folds the closed sessions' fragments into one row each; the
    # answers stay.
    weir("maintain", "--job", job, "--once", timeout=300)
    assert from_duckdb(job, data) == want
