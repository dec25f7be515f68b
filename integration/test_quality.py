"""Data quality on Apache Kafka. Expectations: a `warn` rule counts its
breaches in the `quality` table, a `drop` rule sends its events to the DLQ
naming the rule, both exact (against counts computed here from the
producer's own report) through crashes between commits; a `fail` rule stops
the job naming the breaking event. Monitors: a producer that drifts (a
field arriving null, volume down to a tenth) is caught within a window."""

import json
import os
import re
import signal
import subprocess
import time

from conftest import (WEIR, duckdb_connection, duckdb_offsets, free_port, read_report, spawn,
                      table_path, weir, write_job)
from test_broker_e2e import positions, run_command

RULES = """
[[expectations]]
name = "big_spend"
rule = "price < 400"

[[expectations]]
name = "no_se"
rule = "country <> 'SE'"
on_fail = "drop"
"""


def job_with(tmp_path, broker, name, rules):
    job = write_job(tmp_path / f"{name}.toml", broker, "clicks", tmp_path / name)
    text = job.read_text().replace('group = "weir-clickstream"', f'group = "{name}"')
    job.write_text(text + rules)
    return job


def test_warn_and_drop_are_exact_through_a_crash_between_commits(broker, tmp_path):
    broker.create_topic("clicks", 3)
    job = job_with(tmp_path, broker, "quality", RULES)
    report = tmp_path / "produced.csv"
    weir("produce", "--job", job, "--brokers", broker.bootstrap, "--topic", "clicks",
         "--count", 4000, "--malformed-ratio", 0.02, "--duplicate-ratio", 0.03,
         "--late-ratio", 0, "--seed", 8, "--report", report, timeout=120)
    produced = read_report(report)
    # The rules run before dedup: every message of a Swedish event is refused,
    # re-sent copies too (whatever the crashes did to dedup's memory), and
    # each refused message's breaches count; of the others, the originals'.
    sent = [(s, json.loads(s.payload)) for s in produced if s.kind in ("valid", "duplicate")]
    swedish = sorted(s.position for s, e in sent if e.get("country") == "SE")
    big = [s.position for s, e in sent if e.get("price") is not None and e["price"] >= 400
           and (s.kind == "valid" or e.get("country") == "SE")]
    assert big and swedish and set(swedish) - set(positions(produced, lambda k: k == "valid"))

    data = tmp_path / "quality"
    with open(tmp_path / "run.log", "w") as log:
        # Crash after raw's fourth commit, before the quality table's; then
        # after quality's third, before the outputs'. The replays must
        # count each breach once.
        for point in ("raw@4", "quality@3"):
            crash = {**os.environ, "WEIR_FAULTS": f"sink.after_commit.{point}:crash"}
            crashed = subprocess.run([*run_command(job), "--until", "caught-up"], stdout=log,
                                     stderr=subprocess.STDOUT, env=crash, timeout=180)
            assert crashed.returncode != 0, point
        done = subprocess.run([*run_command(job), "--until", "caught-up"], stdout=log,
                              stderr=subprocess.STDOUT, timeout=180)
        assert done.returncode == 0, (tmp_path / "run.log").read_text()[-3000:]

    kept = set(positions(produced, lambda k: k == "valid")) - set(swedish)
    assert duckdb_offsets(data, "clickstream", "raw") == sorted(kept)
    con = duckdb_connection()
    dropped = con.sql(
        f"SELECT _partition, _offset, error FROM delta_scan('{table_path(data, 'clickstream', 'dlq')}')"
        " WHERE error LIKE 'expectation%' ORDER BY 1, 2").fetchall()
    assert [(p, o) for p, o, _ in dropped] == swedish
    assert {e for _, _, e in dropped} == {"expectation `no_se` failed: country <> 'SE'"}
    quality = dict(con.sql(
        f"SELECT rule || '/' || action, sum(observed) FROM "
        f"delta_scan('{table_path(data, 'clickstream', 'quality')}') GROUP BY 1").fetchall())
    assert quality == {"big_spend/warn": len(big), "no_se/drop": len(swedish)}, quality

    status = weir("status", "--job", job, timeout=60).stdout
    assert f"expectation big_spend (warn): {len(big)} events broke it" in status, status
    assert f"expectation no_se (drop): {len(swedish)} events broke it" in status, status


def test_a_fail_rule_stops_the_job_naming_the_event(broker, tmp_path):
    broker.create_topic("clicks", 3)
    rules = '[[expectations]]\nname = "cap"\nrule = "price < 450"\non_fail = "fail"\n'
    job = job_with(tmp_path, broker, "strict", rules)
    report = tmp_path / "produced.csv"
    weir("produce", "--job", job, "--brokers", broker.bootstrap, "--topic", "clicks",
         "--count", 2000, "--malformed-ratio", 0, "--duplicate-ratio", 0, "--late-ratio", 0,
         "--seed", 9, "--report", report, timeout=120)
    by_position = {s.position: json.loads(s.payload) for s in read_report(report)}
    result = subprocess.run([*run_command(job), "--until", "caught-up"], capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 1, result.stderr[-3000:]
    found = re.search(r"expectation `cap` \(on_fail = \"fail\"\) does not hold for the event at "
                      r"partition (\d+), offset (\d+): price < 450", result.stderr)
    assert found, result.stderr[-3000:]
    position = (int(found[1]), int(found[2]))
    assert by_position[position]["price"] >= 450
    # Nothing of the refused batch was committed: the event is not in raw.
    assert position not in duckdb_offsets(tmp_path / "strict", "clickstream", "raw")


MONITORS = """
[[monitors]]
name = "volume"
check = "volume"
min = 400
window = "5s"

[[monitors]]
name = "price_nulls"
check = "null_rate"
field = "price"
max = 0.5
window = "5s"
"""


def test_monitors_catch_a_producer_that_drifts(broker, tmp_path):
    """200 events/s with prices, then 20/s without any: within a window or
    two the volume and null-rate monitors write their breaches (with the
    figures observed) to `quality`, count them in /metrics, and say so in
    `weir status`; before the drift the null rate stays within bounds."""
    from test_registry import metric

    broker.create_topic("clicks", 3)
    job = job_with(tmp_path, broker, "drift", MONITORS)
    # The same contract without `price`: the drifted producer's events lack it.
    no_price = tmp_path / "no_price.toml"
    spec = job.read_text().split("[[outputs]]")[0]
    no_price.write_text(spec.replace('  { name = "price",    type = "float64" },', ""))
    port = free_port()
    with open(tmp_path / "run.log", "w") as log:
        proc = spawn([WEIR, "run", str(job), "--metrics-addr", f"127.0.0.1:{port}"],
                     stdout=log, stderr=subprocess.STDOUT)
        try:
            def produce(spec, rate, seed):
                weir("produce", "--job", spec, "--brokers", broker.bootstrap, "--topic",
                     "clicks", "--rate", rate, "--seconds", 15, "--malformed-ratio", 0,
                     "--duplicate-ratio", 0, "--late-ratio", 0, "--seed", seed, timeout=60)

            produce(job, 200, 1)
            drifted = time.time()
            produce(no_price, 20, 2)
            breached = metric(port, 'weir_monitor_breaches_total{job="clickstream",monitor="volume"}')
            nulls = metric(port, 'weir_monitor_breaches_total{job="clickstream",monitor="price_nulls"}')
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    assert breached >= 1 and nulls >= 1, (breached, nulls)

    con = duckdb_connection()
    rows = con.sql(
        "SELECT rule, epoch_ms(_ingest_ts) / 1000.0, observed FROM "
        f"delta_scan('{table_path(tmp_path / 'drift', 'clickstream', 'quality')}') "
        "WHERE action = 'monitor' ORDER BY 2").fetchall()
    # A row's time is its window's end. Windows count events as triggers take
    # them, and the first producer's last events may be taken a trigger
    # interval or so after it returned: only a window that began 2 s into the
    # drift holds drifted events alone.
    after = [(rule, at, observed) for rule, at, observed in rows if at > drifted + 5 + 2]
    volume = [observed for rule, _, observed in after if rule == "volume"]
    null_rates = [observed for rule, _, observed in after if rule == "price_nulls"]
    # Windows wholly inside the drift: about 100 events (20/s × 5 s), none priced.
    assert volume and all(50 <= v < 400 for v in volume), rows
    assert null_rates and all(r == 1.0 for r in null_rates), rows
    first = min(at for rule, at, _ in rows if at > drifted)
    assert first - drifted < 60, rows
    # Before the drift about 5 % of prices are null: no window breaks 0.5.
    assert not [r for r in rows if r[0] == "price_nulls" and r[1] <= drifted], rows

    status = weir("status", "--job", job, timeout=60).stdout
    assert re.search(r"monitor volume \(at least 400\): \d+ windows out of bounds, last at", status), status
    assert "monitor price_nulls (at most 0.5)" in status and "(observed 1)" in status, status
