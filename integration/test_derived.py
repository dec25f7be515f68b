"""Computed fields on Apache Kafka: TPC-H Q1 written as a weir job (a derived
column for the discounted price, an aggregate of an inline expression for the
charge, a daily window keyed by return flag and line status) gives DuckDB's
answers over the same rows, through a SIGKILL mid-stream, and DuckDB running
the view `weir views` prints gets the same."""

import json
import math
import os
import signal
import subprocess

from conftest import duckdb_connection, duckdb_with_views, read_report, spawn, weir
from test_bounded import run_until_caught_up
from test_broker_e2e import event_ms, run_command, stored
from test_operate import committed, wait_until

LINEITEM = """
name = "lineitem"

[source]
brokers = "{brokers}"
topic = "lineitem"

[source.properties]
"session.timeout.ms" = "6000"

[schema]
event_id = "l_id"
event_time = "ts"
fields = [
  {{ name = "l_id",            type = "string" }},
  {{ name = "ts",              type = "timestamp" }},
  {{ name = "l_returnflag",    type = "string" }},
  {{ name = "l_linestatus",    type = "string" }},
  {{ name = "l_quantity",      type = "float64" }},
  {{ name = "l_extendedprice", type = "float64" }},
  {{ name = "l_discount",      type = "float64" }},
  {{ name = "l_tax",           type = "float64" }},
]

[[schema.derived]]
name = "disc_price"
expr = "l_extendedprice * (1 - l_discount)"
type = "float64"

[batching]
max_events = 500

[storage]
root = "{data}"

[[outputs]]
name = "q1"
window = "1day"
keys = ["l_returnflag", "l_linestatus"]
aggregates = [
  {{ name = "sum_qty",        fn = "sum",   field = "l_quantity" }},
  {{ name = "sum_base_price", fn = "sum",   field = "l_extendedprice" }},
  {{ name = "sum_disc_price", fn = "sum",   field = "disc_price" }},
  {{ name = "sum_charge",     fn = "sum",   expr = "l_extendedprice * (1 - l_discount) * (1 + l_tax)" }},
  {{ name = "avg_qty",        fn = "avg",   field = "l_quantity" }},
  {{ name = "avg_price",      fn = "avg",   field = "l_extendedprice" }},
  {{ name = "avg_disc",       fn = "avg",   field = "l_discount" }},
  {{ name = "count_order",    fn = "count" }},
]
"""

AGGREGATES = ["sum_qty", "sum_base_price", "sum_disc_price", "sum_charge", "avg_qty",
              "avg_price", "avg_disc", "count_order"]

Q1 = """
SELECT epoch_ms(date_trunc('day', make_timestamp(ts_ms * 1000))) AS day,
       l_returnflag, l_linestatus,
       sum(l_quantity) AS sum_qty,
       sum(l_extendedprice) AS sum_base_price,
       sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
       sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge,
       avg(l_quantity) AS avg_qty,
       avg(l_extendedprice) AS avg_price,
       avg(l_discount) AS avg_disc,
       count(*) AS count_order
FROM lineitem GROUP BY ALL
"""


def close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def test_tpch_q1_as_a_job_gives_duckdbs_answers(broker, tmp_path):
    broker.create_topic("lineitem", 2)
    job = tmp_path / "lineitem.toml"
    job.write_text(LINEITEM.format(brokers=broker.bootstrap, data=tmp_path / "data"))
    report = tmp_path / "produced.csv"
    weir("produce", "--job", job, "--brokers", broker.bootstrap, "--topic", "lineitem",
         "--count", 4000, "--malformed-ratio", 0.01, "--duplicate-ratio", 0.02,
         "--late-ratio", 0, "--seed", 21, "--report", report, timeout=120)
    with open(tmp_path / "run.log", "w") as log:
        # Each of the eight triggers slowed by 1.5 s, so the kill lands
        # mid-stream even on a loaded machine, where each look at the tables
        # takes a while.
        slowed = {**os.environ, "WEIR_FAULTS": "sink.after_commit.raw@*:sleep=1500"}
        proc = spawn(run_command(job), stdout=log, stderr=subprocess.STDOUT,
                     env=slowed)
        wait_until(lambda: committed(tmp_path / "data", "lineitem") > 0, 120, proc,
                   "a first trigger")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert committed(tmp_path / "data", "lineitem") < stored(read_report(report)), \
            "killed after the last event"
        run_until_caught_up(job, log)

    # DuckDB over the producer's own events (the on-time originals).
    events = [json.loads(s.payload) for s in read_report(report) if s.kind == "valid"]
    con = duckdb_connection()
    con.execute("CREATE TABLE lineitem (ts_ms BIGINT, l_returnflag VARCHAR, "
                "l_linestatus VARCHAR, l_quantity DOUBLE, l_extendedprice DOUBLE, "
                "l_discount DOUBLE, l_tax DOUBLE)")
    columns = ["l_returnflag", "l_linestatus", "l_quantity", "l_extendedprice", "l_discount",
               "l_tax"]
    con.executemany("INSERT INTO lineitem VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [[event_ms(e["ts"]), *(e.get(c) for c in columns)] for e in events])
    expected = {(day, flag, status): rest
                for day, flag, status, *rest in con.sql(Q1).fetchall()}

    rows = json.loads(weir("query", "--job", job, "--format", "json",
                           "SELECT * FROM q1").stdout)
    got = {}
    for row in rows:
        day = event_ms(row["window_start"])
        got[(day, row["l_returnflag"], row["l_linestatus"])] = [row[a] for a in AGGREGATES]
    viewed = duckdb_with_views(job).sql(
        f"SELECT epoch_ms(window_start), l_returnflag, l_linestatus, {', '.join(AGGREGATES)} "
        "FROM q1").fetchall()
    assert len(viewed) == len(got)
    for day, flag, status, *rest in viewed:
        assert all(close(a, b) for a, b in zip(rest, got[(day, flag, status)])), (flag, status)
    assert sum(r[-1] for r in got.values()) == len(events)
    assert got.keys() == expected.keys()
    for group, want in expected.items():
        assert all(close(a, b) for a, b in zip(got[group], want)), (group, got[group], want)
