"""Data-quality expectations on Apache Kafka: a `warn` rule counts its
breaches in the `quality` table, a `drop` rule sends its events to the DLQ
naming the rule, both exact (against counts computed here from the
producer's own report) through a crash between raw's commit and the
others'; a `fail` rule stops the job naming the breaking event."""

import json
import os
import re
import subprocess

from conftest import duckdb_connection, duckdb_offsets, read_report, table_path, weir, write_job
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


def valid_events(report):
    return [(sent, json.loads(sent.payload)) for sent in report if sent.kind == "valid"]


def test_warn_and_drop_are_exact_through_a_crash_between_commits(broker, tmp_path):
    broker.create_topic("clicks", 3)
    job = job_with(tmp_path, broker, "quality", RULES)
    report = tmp_path / "produced.csv"
    weir("produce", "--job", job, "--brokers", broker.bootstrap, "--topic", "clicks",
         "--count", 4000, "--malformed-ratio", 0.02, "--duplicate-ratio", 0.03,
         "--late-ratio", 0, "--seed", 8, "--report", report, timeout=120)
    produced = read_report(report)
    events = valid_events(produced)
    big = [s.position for s, e in events if e.get("price") is not None and e["price"] >= 400]
    swedish = sorted(s.position for s, e in events if e.get("country") == "SE")
    assert big and swedish

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
